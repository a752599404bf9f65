#include "runtime/train/data/synthetic_corpus.h"

#include <array>
#include <initializer_list>
#include <iterator>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "runtime/core/philox.h"
#include "runtime/core/status.h"

namespace smoe {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// One Philox stream per document: the key mixes (seed, split, document index), the counter counts
// draws, so documents are independent of each other and of how many bytes were requested.
class Rng {
 public:
  Rng(uint64_t seed, int split, int64_t doc)
      : key_(SplitMix64(SplitMix64(SplitMix64(seed) ^ (0xA0761D6478BD642Full * (split + 1))) ^
                        static_cast<uint64_t>(doc))) {}

  uint32_t Bits() {
    if ((count_ & 3) == 0) block_ = Philox4x32(key_, count_ >> 2);
    return block_.x[count_++ & 3];
  }
  // Uniform in [0, n).
  int Below(int n) { return static_cast<int>((static_cast<uint64_t>(Bits()) * n) >> 32); }
  // Uniform in [lo, hi].
  int Range(int lo, int hi) { return lo + Below(hi - lo + 1); }
  bool Chance(double p) { return Bits() < p * 4294967296.0; }
  // Items are string literals or constexpr arrays of them: the result never dangles.
  template <size_t N>
  absl::string_view Pick(const absl::string_view (&items)[N]) {
    return items[Below(static_cast<int>(N))];
  }
  absl::string_view Pick(std::initializer_list<absl::string_view> items) {
    return items.begin()[Below(static_cast<int>(items.size()))];
  }
  // Index drawn with the given relative weights.
  int Weighted(std::initializer_list<int> weights) {
    int total = 0;
    for (int w : weights) total += w;
    int r = Below(total);
    int i = 0;
    for (int w : weights) {
      if (r < w) return i;
      r -= w;
      ++i;
    }
    return i - 1;
  }

 private:
  uint64_t key_;
  uint64_t count_ = 0;
  PhiloxBlock block_{};
};

constexpr absl::string_view kUsers[] = {"root", "deploy", "admin", "alice",
                                        "bob",  "ubuntu", "git",   "jenkins"};
constexpr absl::string_view kHosts[] = {"web-01",      "web-02", "db-01",    "cache-03",
                                        "ci-runner-7", "api-gw", "build-02", "mon-01"};
constexpr absl::string_view kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
constexpr absl::string_view kServices[] = {"nginx", "postgresql", "redis-server", "docker",
                                           "sshd",  "cron",       "kubelet",      "prometheus"};
constexpr absl::string_view kDirs[] = {
    "/var/log", "/etc/nginx",    "/home/deploy/app",    "/usr/local/bin",   "/opt/app/releases",
    "/tmp",     "/srv/www/html", "/etc/systemd/system", "~/src/api-server", "/var/lib/docker"};
constexpr absl::string_view kFiles[] = {"/etc/nginx/nginx.conf",
                                        "/etc/hosts",
                                        "/var/log/syslog",
                                        "config.yaml",
                                        "/etc/ssh/sshd_config",
                                        "docker-compose.yml",
                                        "Makefile",
                                        ".env",
                                        "/etc/fstab",
                                        "requirements.txt",
                                        "/etc/crontab",
                                        "README.md"};
constexpr absl::string_view kLogFiles[] = {"/var/log/syslog",           "/var/log/auth.log",
                                           "/var/log/nginx/access.log", "/var/log/nginx/error.log",
                                           "/var/log/kern.log",         "/var/log/app/server.log"};
constexpr absl::string_view kPatterns[] = {
    "ERROR", "Timeout", "Connection refused", "WARN", "Failed password", "OOM", "segfault", "TODO"};
constexpr absl::string_view kDomains[] = {"api.example.com", "status.example.org",
                                          "registry.internal", "grafana.example.com",
                                          "auth.example.net"};
constexpr absl::string_view kUrlPaths[] = {
    "/api/v1/users",        "/api/v1/orders",        "/healthz",    "/metrics",     "/login",
    "/static/css/main.css", "/api/v2/search?q=test", "/index.html", "/favicon.ico", "/api/v1/jobs"};
constexpr absl::string_view kBranches[] = {"main",
                                           "develop",
                                           "feature/login-form",
                                           "fix/retry-timeout",
                                           "release/2.4",
                                           "hotfix/CVE-2024-1234"};
constexpr absl::string_view kCommitMsgs[] = {"Fix null check in UserService",
                                             "Bump version to 2.4.1",
                                             "Add retry with exponential backoff",
                                             "Update README",
                                             "Refactor config loader",
                                             "Remove unused imports",
                                             "WIP: migrate to Postgres 16"};
constexpr absl::string_view kPkgs[] = {"requests", "numpy", "flask", "gunicorn",
                                       "pyyaml",   "boto3", "pytest"};
constexpr absl::string_view kImages[] = {
    "nginx:1.25-alpine", "postgres:16",           "redis:7.2", "python:3.12-slim", "ubuntu:22.04",
    "node:20-bookworm",  "grafana/grafana:10.2.3"};
constexpr absl::string_view kContainers[] = {"web", "db", "cache", "worker", "proxy"};
constexpr absl::string_view kNamespaces[] = {"default", "kube-system", "monitoring", "prod",
                                             "staging"};
constexpr absl::string_view kEnvVars[] = {"PATH",     "HOME", "JAVA_HOME", "GOPATH",
                                          "NODE_ENV", "LANG", "KUBECONFIG"};
constexpr absl::string_view kEnvValues[] = {"$HOME/.local/bin:$PATH",
                                            "/home/deploy",
                                            "/usr/lib/jvm/java-17-openjdk-amd64",
                                            "$HOME/go",
                                            "production",
                                            "en_US.UTF-8",
                                            "~/.kube/config-prod"};
static_assert(std::size(kEnvVars) == std::size(kEnvValues));
constexpr absl::string_view kMakeTargets[] = {"all",   "test",         "install",
                                              "clean", "docker-build", "lint"};
constexpr absl::string_view kExts[] = {"log", "tmp", "gz", "bak", "pyc"};
constexpr absl::string_view kThreads[] = {
    "main",        "http-nio-8080-exec-1", "http-nio-8080-exec-2",
    "scheduler-1", "pool-3-thread-1",      "kafka-consumer-0"};
constexpr absl::string_view kLoggers[] = {"c.e.api.UserController",
                                          "c.e.api.OrderService",
                                          "o.h.engine.jdbc.SQL",
                                          "c.e.cache.RedisClient",
                                          "o.s.web.servlet.DispatcherServlet",
                                          "c.e.jobs.ReportScheduler"};
constexpr absl::string_view kMethods[] = {"GET", "GET", "GET", "POST", "PUT", "DELETE"};
constexpr absl::string_view kAgents[] = {
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "curl/8.5.0",
    "Prometheus/2.48.1",
    "python-requests/2.31.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
    "kube-probe/1.29",
    "Go-http-client/1.1"};
constexpr absl::string_view kDevices[] = {"/dev/sda1", "/dev/nvme0n1p2", "/dev/mapper/vg0-root",
                                          "/dev/sdb1"};
constexpr absl::string_view kMounts[] = {"/", "/home", "/var", "/data", "/boot"};

std::string Pad2(int v) { return absl::StrFormat("%02d", v); }

// Per-document entities, fixed for the whole document so a model can copy them from context.
struct DocContext {
  std::string user, host, month, ip;
  int day = 1;
  int year = 2024;
  int seconds = 0;  // time of day, advancing line by line
  std::map<std::string, int> pids;

  int Pid(Rng& rng, absl::string_view proc_name) {
    const std::string proc(proc_name);
    auto it = pids.find(proc);
    if (it != pids.end()) return it->second;
    const int pid = rng.Range(300, 9999);
    pids[proc] = pid;
    return pid;
  }
  void Tick(Rng& rng) { seconds = (seconds + rng.Range(0, 12)) % 86400; }
  std::string Clock() const {
    return absl::StrCat(Pad2(seconds / 3600), ":", Pad2(seconds / 60 % 60), ":",
                        Pad2(seconds % 60));
  }
  std::string SyslogTime() const { return absl::StrFormat("%s %2d %s", month, day, Clock()); }
  std::string IsoTime() const {
    int month_index = 1;
    for (int i = 0; i < 12; ++i) {
      if (kMonths[i] == month) month_index = i + 1;
    }
    return absl::StrCat(year, "-", Pad2(month_index), "-", Pad2(day), "T", Clock(), "Z");
  }
  std::string AccessTime() const {
    return absl::StrCat(Pad2(day), "/", month, "/", year, ":", Clock(), " +0000");
  }
};

DocContext NewContext(Rng& rng) {
  DocContext c;
  c.user = std::string(rng.Pick(kUsers));
  c.host = std::string(rng.Pick(kHosts));
  c.month = std::string(rng.Pick(kMonths));
  c.day = rng.Range(1, 28);
  c.year = rng.Range(2022, 2025);
  c.seconds = rng.Below(86400);
  c.ip = absl::StrCat("10.0.", rng.Range(0, 9), ".", rng.Range(2, 60));
  return c;
}

// ---- shell sessions -----------------------------------------------------------------------------

// A clock in the prompt, as many shell setups show, keeps command lines unique to a session.
std::string Prompt(const DocContext& c, absl::string_view cwd) {
  return absl::StrCat("[", c.Clock(), "] ", c.user, "@", c.host, ":", cwd,
                      c.user == "root" ? "# " : "$ ");
}

void ShellDocument(Rng& rng, std::string& out) {
  DocContext c = NewContext(rng);
  std::string cwd = c.user == "root" ? "/root" : "~";
  const int commands = rng.Range(6, 16);
  for (int i = 0; i < commands; ++i) {
    absl::StrAppend(&out, Prompt(c, cwd));
    const absl::string_view service = rng.Pick(kServices);
    switch (rng.Below(20)) {
      case 0:
        cwd = std::string(rng.Pick(kDirs));
        absl::StrAppend(&out, "cd ", cwd, "\n");
        break;
      case 1: {
        absl::StrAppend(&out, "ls -la\n", "total ", rng.Range(8, 96), "\n");
        const int n = rng.Range(2, 4);
        absl::StrAppend(&out, "drwxr-xr-x  2 ", c.user, " ", c.user, "  4096 ", c.month, " ",
                        Pad2(c.day), " ", Pad2(c.seconds / 3600), ":00 .\n");
        for (int j = 0; j < n; ++j) {
          const absl::string_view f = rng.Pick(kFiles);
          const size_t slash = f.rfind('/');
          absl::StrAppend(&out, rng.Chance(0.5) ? "-rw-r--r--  1 " : "-rwxr-xr-x  1 ", c.user, " ",
                          c.user, "  ", rng.Range(100, 9999), " ", c.month, " ", Pad2(c.day), " ",
                          Pad2(rng.Range(0, 23)), ":", Pad2(rng.Range(0, 59)), " ",
                          slash == std::string::npos ? f : f.substr(slash + 1), "\n");
        }
        break;
      }
      case 2:
        absl::StrAppend(&out, "grep -rn \"", rng.Pick(kPatterns), "\" ", rng.Pick(kDirs),
                        " | head -n 20\n");
        break;
      case 3:
        absl::StrAppend(&out, "tail -n ", rng.Pick({"20", "50", "100", "200"}), " ",
                        rng.Pick(kLogFiles), "\n");
        break;
      case 4: {
        const absl::string_view verb = rng.Pick({"start", "stop", "restart", "status", "enable"});
        absl::StrAppend(&out, "sudo systemctl ", verb, " ", service, ".service\n");
        if (verb == "status") {
          absl::StrAppend(&out, "* ", service, ".service - ", service, " daemon\n",
                          "     Loaded: loaded (/lib/systemd/system/", service,
                          ".service; enabled; vendor preset: enabled)\n",
                          "     Active: active (running) since Mon ", c.year, "-03-", Pad2(c.day),
                          " ", c.Clock(), " UTC; ", rng.Range(1, 59), "min ago\n",
                          "   Main PID: ", c.Pid(rng, service), " (", service, ")\n");
        }
        break;
      }
      case 5:
        absl::StrAppend(&out, "journalctl -u ", service, " --since \"",
                        rng.Pick({"1 hour ago", "today", "yesterday", "10 min ago"}),
                        "\" --no-pager\n");
        break;
      case 6: {
        const int k = rng.Below(5);
        const absl::string_view name = rng.Pick(kContainers);
        if (k == 0) {
          absl::StrAppend(&out, "docker ps -a --format '{{.Names}}\\t{{.Status}}'\n");
          absl::StrAppend(&out, name, "\tUp ", rng.Range(2, 59), " minutes\n");
        } else if (k == 1) {
          absl::StrAppend(&out, "docker logs --tail 50 -f ", name, "\n");
        } else if (k == 2) {
          absl::StrAppend(&out, "docker exec -it ", name, " /bin/sh\n");
        } else if (k == 3) {
          absl::StrAppend(&out, "docker pull ", rng.Pick(kImages), "\n");
        } else {
          absl::StrAppend(&out, "docker compose -f docker-compose.yml up -d --build\n");
        }
        break;
      }
      case 7: {
        const absl::string_view ns = rng.Pick(kNamespaces);
        const int k = rng.Below(4);
        if (k == 0) {
          absl::StrAppend(&out, "kubectl get pods -n ", ns, "\n",
                          "NAME                     READY   STATUS    RESTARTS   AGE\n",
                          rng.Pick(kContainers), "-deployment-7d9f8b", "   1/1     Running   ",
                          rng.Range(0, 3), "          ", rng.Range(2, 40), "d\n");
        } else if (k == 1) {
          absl::StrAppend(&out, "kubectl describe pod ", rng.Pick(kContainers), "-0 -n ", ns, "\n");
        } else if (k == 2) {
          absl::StrAppend(&out, "kubectl apply -f k8s/", rng.Pick(kContainers),
                          "-deployment.yaml -n ", ns, "\n");
        } else {
          absl::StrAppend(&out, "kubectl logs -n ", ns, " deploy/", rng.Pick(kContainers),
                          " --since=1h\n");
        }
        break;
      }
      case 8: {
        const int k = rng.Below(5);
        if (k == 0) {
          absl::StrAppend(&out, "git status\nOn branch ", rng.Pick(kBranches),
                          "\nYour branch is up to date with 'origin/main'.\n\n"
                          "nothing to commit, working tree clean\n");
        } else if (k == 1) {
          absl::StrAppend(&out, "git pull --rebase origin main\n");
        } else if (k == 2) {
          absl::StrAppend(&out, "git commit -am \"", rng.Pick(kCommitMsgs), "\"\n");
        } else if (k == 3) {
          absl::StrAppend(&out, "git checkout -b ", rng.Pick(kBranches), "\n");
        } else {
          absl::StrAppend(&out, "git push origin ", rng.Pick(kBranches), "\n");
        }
        break;
      }
      case 9:
        absl::StrAppend(&out, "chmod ", rng.Pick({"644", "755", "600", "700"}), " ",
                        rng.Pick(kFiles), "\n");
        break;
      case 10:
        absl::StrAppend(&out, "sudo chown -R ", c.user, ":", c.user, " ", rng.Pick(kDirs), "\n");
        break;
      case 11:
        absl::StrAppend(&out, "tar -czf /tmp/backup-", c.year, "-", Pad2(c.day), ".tar.gz ",
                        rng.Pick(kDirs), "\n");
        break;
      case 12:
        absl::StrAppend(&out, "curl -sS -o /dev/null -w \"%{http_code}\\n\" https://",
                        rng.Pick(kDomains), rng.Pick(kUrlPaths), "\n",
                        rng.Pick({"200", "200", "200", "301", "404", "502"}), "\n");
        break;
      case 13:
        absl::StrAppend(&out, "ssh -p ", rng.Pick({"22", "2222"}), " ", rng.Pick(kUsers), "@",
                        rng.Pick(kHosts), ".internal\n");
        break;
      case 14:
        absl::StrAppend(&out, "find ", rng.Pick(kDirs), " -name \"*.", rng.Pick(kExts),
                        "\" -mtime +", rng.Pick({"1", "7", "30"}), " -delete\n");
        break;
      case 15: {
        const int v = rng.Below(static_cast<int>(std::size(kEnvVars)));
        absl::StrAppend(&out, "export ", kEnvVars[v], "=", kEnvValues[v], "\n");
        break;
      }
      case 16:
        absl::StrAppend(&out, "ps aux | grep ", service, "\n", c.user, "     ", c.Pid(rng, service),
                        "  0.", rng.Below(10), "  1.", rng.Below(10), " ", service, "\n");
        break;
      case 17: {
        const absl::string_view mount = rng.Pick(kMounts);
        constexpr int kSizes[] = {20, 50, 100, 250, 500};
        const int size = kSizes[rng.Below(5)];
        const int used = size * rng.Range(10, 95) / 100;
        absl::StrAppend(&out, "df -h ", mount, "\n",
                        "Filesystem      Size  Used Avail Use% Mounted on\n", rng.Pick(kDevices),
                        "  ", size, "G  ", used, "G  ", size - used, "G  ", used * 100 / size, "% ",
                        mount, "\n");
        break;
      }
      case 18:
        absl::StrAppend(&out, "make -j", rng.Pick({"2", "4", "8"}), " ", rng.Pick(kMakeTargets),
                        "\n");
        break;
      default:
        absl::StrAppend(&out, "python3 -m pip install --upgrade ", rng.Pick(kPkgs), "\n");
        break;
    }
    c.Tick(rng);
  }
}

// ---- logs -------------------------------------------------------------------------------------

void SyslogDocument(Rng& rng, std::string& out) {
  DocContext c = NewContext(rng);
  absl::StrAppend(&out, "==> ", rng.Pick({"/var/log/syslog", "/var/log/auth.log"}), " <==\n");
  const int lines = rng.Range(8, 24);
  for (int i = 0; i < lines; ++i) {
    c.Tick(rng);
    absl::StrAppend(&out, c.SyslogTime(), " ", c.host, " ");
    const absl::string_view service = rng.Pick(kServices);
    switch (rng.Below(8)) {
      case 0:
        absl::StrAppend(&out, "sshd[", c.Pid(rng, "sshd"), "]: Accepted publickey for ",
                        rng.Pick(kUsers), " from ", c.ip, " port ", rng.Range(40000, 60999),
                        " ssh2: RSA SHA256:", rng.Pick({"x9Kq", "Lm3Z", "pQ7w"}), "\n");
        break;
      case 1:
        absl::StrAppend(&out, "sshd[", c.Pid(rng, "sshd"), "]: Failed password for ",
                        rng.Chance(0.5) ? "invalid user " : "", rng.Pick(kUsers), " from ", c.ip,
                        " port ", rng.Range(40000, 60999), " ssh2\n");
        break;
      case 2:
        absl::StrAppend(&out,
                        "systemd[1]: ", rng.Pick({"Started", "Stopped", "Reloading", "Starting"}),
                        " ", service, ".service - ", service, " daemon.\n");
        break;
      case 3:
        absl::StrAppend(&out, "CRON[", c.Pid(rng, "CRON"), "]: (", c.user,
                        ") CMD (cd / && run-parts --report /etc/cron.",
                        rng.Pick({"hourly", "daily", "weekly"}), ")\n");
        break;
      case 4:
        absl::StrAppend(&out, "kernel: [", rng.Range(100, 99999), ".", rng.Range(100, 999), "] ",
                        rng.Pick({"EXT4-fs (sda1): mounted filesystem with ordered data mode",
                                  "eth0: Link is Up - 1Gbps/Full - flow control off",
                                  "Out of memory: Killed process",
                                  "TCP: request_sock_TCP: Possible SYN flooding on port 443"}),
                        "\n");
        break;
      case 5:
        absl::StrAppend(&out, "sudo:   ", c.user, " : TTY=pts/", rng.Below(4),
                        " ; PWD=", rng.Pick(kDirs),
                        " ; USER=root ; COMMAND=/usr/bin/systemctl restart ", service, "\n");
        break;
      case 6:
        absl::StrAppend(&out, "dockerd[", c.Pid(rng, "dockerd"),
                        "]: level=", rng.Pick({"info", "info", "warning", "error"}), " msg=\"",
                        rng.Pick({"Container failed to exit within 10s", "ignoring event",
                                  "Layer already exists", "API listen on /run/docker.sock"}),
                        "\"\n");
        break;
      default:
        absl::StrAppend(&out, service, "[", c.Pid(rng, service), "]: ",
                        rng.Pick({"Reloading configuration", "Connection reset by peer",
                                  "Listening on 0.0.0.0:8080", "Received SIGHUP, reopening logs"}),
                        "\n");
        break;
    }
  }
}

void AppLogDocument(Rng& rng, std::string& out) {
  DocContext c = NewContext(rng);
  absl::StrAppend(&out, "==> /var/log/app/server.log <==\n");
  const int lines = rng.Range(8, 24);
  for (int i = 0; i < lines; ++i) {
    c.Tick(rng);
    const int level = rng.Weighted({6, 2, 2, 1});
    const char* level_name[] = {"INFO ", "DEBUG", "WARN ", "ERROR"};
    absl::StrAppend(&out, c.IsoTime(), " ", level_name[level], " [", rng.Pick(kThreads), "] ",
                    rng.Pick(kLoggers), " - ");
    if (level == 3) {
      absl::StrAppend(&out, "Request failed: java.net.SocketTimeoutException: Read timed out\n",
                      "\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:",
                      rng.Pick({"168", "140"}), ")\n",
                      "\tat com.example.api.HttpClient.execute(HttpClient.java:",
                      rng.Pick({"88", "212"}), ")\n");
      continue;
    }
    switch (rng.Below(6)) {
      case 0:
        absl::StrAppend(&out, rng.Pick(kMethods), " ", rng.Pick(kUrlPaths), " -> ",
                        rng.Pick({"200", "200", "201", "204", "404", "500"}), " in ",
                        rng.Range(1, 250), "ms\n");
        break;
      case 1:
        absl::StrAppend(&out, "HikariPool-1 - Pool stats (total=10, active=", rng.Range(0, 10),
                        ", idle=", rng.Range(0, 10), ", waiting=0)\n");
        break;
      case 2:
        absl::StrAppend(&out, "Cache ", rng.Chance(0.5) ? "hit" : "miss",
                        " for key user:", rng.Range(1, 999), "\n");
        break;
      case 3:
        absl::StrAppend(&out, "Retrying request to http://", rng.Pick(kDomains),
                        rng.Pick(kUrlPaths), " (attempt ", rng.Range(2, 5), "/5)\n");
        break;
      case 4:
        absl::StrAppend(&out, "select u.id, u.email from users u where u.id=? limit ?\n");
        break;
      default:
        absl::StrAppend(&out, "Scheduled job 'daily-report' completed in ", rng.Range(1, 60),
                        "s\n");
        break;
    }
  }
}

void AccessLogDocument(Rng& rng, std::string& out) {
  DocContext c = NewContext(rng);
  absl::StrAppend(&out, "==> /var/log/nginx/access.log <==\n");
  const int lines = rng.Range(6, 16);
  for (int i = 0; i < lines; ++i) {
    c.Tick(rng);
    absl::StrAppend(&out, rng.Chance(0.7) ? c.ip : absl::StrCat("192.168.1.", rng.Range(2, 30)),
                    " - - [", c.AccessTime(), "] \"", rng.Pick(kMethods), " ", rng.Pick(kUrlPaths),
                    " HTTP/1.1\" ", rng.Pick({"200", "200", "200", "304", "404", "502"}), " ",
                    rng.Range(100, 9999), " \"-\" \"", rng.Pick(kAgents), "\"\n");
  }
}

// ---- config files -----------------------------------------------------------------------------

void IniConfig(Rng& rng, std::string& out) {
  absl::StrAppend(&out, "cat /etc/app/config.ini\n",
                  "; generated by ansible, do not edit by hand\n");
  absl::StrAppend(
      &out, "[server]\nhost = 0.0.0.0\nport = ", rng.Pick({"8080", "8000", "3000", "5000"}),
      "\nworkers = ", rng.Pick({"2", "4", "8"}), "\ndebug = ", rng.Pick({"false", "true"}), "\n\n");
  absl::StrAppend(&out, "[database]\nhost = ", rng.Pick(kHosts), ".internal\nport = 5432\nname = ",
                  rng.Pick({"app_prod", "app_staging", "orders", "users"}),
                  "\nuser = ", rng.Pick(kUsers), "\npool_size = ", rng.Pick({"5", "10", "20"}),
                  "\nsslmode = ", rng.Pick({"require", "disable", "verify-full"}), "\n\n");
  absl::StrAppend(&out, "[logging]\nlevel = ", rng.Pick({"INFO", "DEBUG", "WARNING"}),
                  "\nfile = /var/log/app/server.log\nmax_bytes = 10485760\nbackup_count = ",
                  rng.Pick({"3", "5", "7"}), "\n");
}

void YamlConfig(Rng& rng, std::string& out) {
  const absl::string_view name = rng.Pick(kContainers);
  absl::StrAppend(
      &out, "cat k8s/", name, "-deployment.yaml\n",
      "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: ", name,
      "\n  namespace: ", rng.Pick(kNamespaces), "\n  labels:\n    app: ", name,
      "\nspec:\n  replicas: ", rng.Range(1, 5),
      "\n  selector:\n    matchLabels:\n      app: ", name,
      "\n  template:\n    spec:\n      containers:\n        - name: ", name,
      "\n          image: ", rng.Pick(kImages),
      "\n          ports:\n            - containerPort: ", rng.Pick({"8080", "80", "5432", "6379"}),
      "\n          resources:\n            limits:\n              cpu: \"",
      rng.Pick({"500m", "1", "2"}),
      "\"\n              memory: ", rng.Pick({"256Mi", "512Mi", "1Gi"}), "\n");
}

void NginxConfig(Rng& rng, std::string& out) {
  const absl::string_view domain = rng.Pick(kDomains);
  absl::StrAppend(
      &out, "cat /etc/nginx/conf.d/", domain, ".conf\n", "server {\n",
      "    listen 443 ssl http2;\n    server_name ", domain, ";\n\n",
      "    ssl_certificate /etc/letsencrypt/live/", domain, "/fullchain.pem;\n",
      "    ssl_certificate_key /etc/letsencrypt/live/", domain, "/privkey.pem;\n\n",
      "    location / {\n        proxy_pass http://127.0.0.1:", rng.Pick({"8080", "8000", "3000"}),
      ";\n", "        proxy_set_header Host $host;\n",
      "        proxy_set_header X-Real-IP $remote_addr;\n", "        proxy_read_timeout ",
      rng.Pick({"30s", "60s", "120s"}), ";\n", "    }\n}\n");
}

void SystemdUnit(Rng& rng, std::string& out) {
  const absl::string_view service = rng.Pick(kServices);
  absl::StrAppend(&out, "cat /etc/systemd/system/", service, ".service\n", "[Unit]\n",
                  "Description=", service, " daemon\nAfter=network.target\n\n[Service]\n",
                  "Type=", rng.Pick({"simple", "forking", "notify"}), "\nUser=", rng.Pick(kUsers),
                  "\nExecStart=/usr/local/bin/", service, " --config /etc/", service, "/", service,
                  ".conf\nRestart=", rng.Pick({"always", "on-failure"}),
                  "\nRestartSec=", rng.Pick({"5", "10"}),
                  "\nLimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n");
}

void Dockerfile(Rng& rng, std::string& out) {
  absl::StrAppend(&out, "cat Dockerfile\n", "FROM ", rng.Pick(kImages), "\n",
                  "RUN apt-get update && apt-get install -y --no-install-recommends ",
                  rng.Pick({"curl", "git", "ca-certificates", "build-essential"}),
                  " && rm -rf /var/lib/apt/lists/*\n", "WORKDIR /app\n",
                  "COPY requirements.txt .\n",
                  "RUN pip install --no-cache-dir -r requirements.txt\n", "COPY . .\n",
                  "ENV PYTHONUNBUFFERED=1 PORT=", rng.Pick({"8080", "8000"}), "\n", "EXPOSE ",
                  rng.Pick({"8080", "8000"}), "\n", "USER ",
                  rng.Pick({"app", "nobody", "1000:1000"}), "\n", "CMD [\"gunicorn\", \"-w\", \"",
                  rng.Pick({"2", "4"}), "\", \"-b\", \"0.0.0.0:8080\", \"app:create_app()\"]\n");
}

void Crontab(Rng& rng, std::string& out) {
  absl::StrAppend(&out, "crontab -l\n", "# m h  dom mon dow   command\n");
  const int n = rng.Range(2, 5);
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(
        &out, rng.Pick({"*/5", "0", "15", "30"}), " ", rng.Pick({"*", "2", "3", "*/6"}), " * * ",
        rng.Pick({"*", "1-5", "0"}), " ",
        rng.Pick({"/usr/local/bin/backup.sh >> /var/log/backup.log 2>&1", "certbot renew --quiet",
                  "find /tmp -type f -mtime +7 -delete", "docker system prune -af > /dev/null"}),
        "\n");
  }
}

void EnvFile(Rng& rng, std::string& out) {
  absl::StrAppend(&out, "cat .env\n", "APP_ENV=", rng.Pick({"production", "staging"}),
                  "\nDATABASE_URL=postgres://", rng.Pick(kUsers), ":${DB_PASSWORD}@",
                  rng.Pick(kHosts), ".internal:5432/app\nREDIS_URL=redis://cache-03:6379/",
                  rng.Below(4), "\nLOG_LEVEL=", rng.Pick({"info", "debug", "warn"}),
                  "\nMAX_UPLOAD_MB=", rng.Pick({"10", "50", "100"}),
                  "\nFEATURE_FLAGS=", rng.Pick({"new-checkout,dark-mode", "beta-api", "none"}),
                  "\n");
}

void ConfigDocument(Rng& rng, std::string& out) {
  // Shown as a shell session printing the file: the prompt's clock makes each document unique,
  // so held-out config documents are never copies of train ones.
  DocContext c = NewContext(rng);
  absl::StrAppend(&out, Prompt(c, c.user == "root" ? "/root" : "~"));
  switch (rng.Below(7)) {
    case 0:
      IniConfig(rng, out);
      break;
    case 1:
      YamlConfig(rng, out);
      break;
    case 2:
      NginxConfig(rng, out);
      break;
    case 3:
      SystemdUnit(rng, out);
      break;
    case 4:
      Dockerfile(rng, out);
      break;
    case 5:
      Crontab(rng, out);
      break;
    default:
      EnvFile(rng, out);
      break;
  }
}

}  // namespace

std::string SyntheticDocument(uint64_t seed, int split, int64_t index) {
  MOE_CHECK_GE(split, 0);
  MOE_CHECK_GE(index, 0);
  Rng rng(seed, split, index);
  std::string out;
  switch (rng.Weighted({4, 2, 2, 1, 3})) {
    case 0:
      ShellDocument(rng, out);
      break;
    case 1:
      SyslogDocument(rng, out);
      break;
    case 2:
      AppLogDocument(rng, out);
      break;
    case 3:
      AccessLogDocument(rng, out);
      break;
    default:
      ConfigDocument(rng, out);
      break;
  }
  out.push_back('\n');
  return out;
}

std::string GenerateSyntheticText(uint64_t seed, int split, int64_t num_bytes) {
  MOE_CHECK_GE(split, 0);
  MOE_CHECK_GE(num_bytes, 0);
  std::string text;
  text.reserve(static_cast<size_t>(num_bytes) + 4096);
  for (int64_t doc = 0; static_cast<int64_t>(text.size()) < num_bytes; ++doc) {
    text += SyntheticDocument(seed, split, doc);
  }
  text.resize(static_cast<size_t>(num_bytes));
  return text;
}

}  // namespace smoe
