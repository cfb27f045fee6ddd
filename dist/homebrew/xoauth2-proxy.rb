# Homebrew formula: builds from the source tarball dist/build.sh makes
# (git archive); build.sh fills in @URL@, @SHA256@ and @VERSION@ and writes
# the result to target/dist/xoauth2-proxy.rb.
class Xoauth2Proxy < Formula
  desc "Password logins for Office 365 IMAP, POP3 and SMTP through OAuth 2.0"
  homepage "https://github.com/xoauth2-proxy/xoauth2-proxy"
  url "@URL@"
  sha256 "@SHA256@"
  version "@VERSION@"
  license any_of: ["MIT", "Apache-2.0"]

  depends_on "rust" => :build

  def install
    system "cargo", "install", *std_cargo_args
    (etc/"xoauth2-proxy").install "proxy.toml.example" => "proxy.toml" unless (etc/"xoauth2-proxy/proxy.toml").exist?
    pkgshare.install "proxy.toml.example"
  end

  def caveats
    <<~EOS
      Edit #{etc}/xoauth2-proxy/proxy.toml (username, client_id), then sign in:
        xoauth2-proxy authorize you@example.com --config #{etc}/xoauth2-proxy/proxy.toml
      and start the agent: brew services start xoauth2-proxy
    EOS
  end

  # The LaunchAgent `xoauth2-proxy service install` writes (src/service/launchd.rs):
  # the same arguments, restarted after a crash but not after a clean stop,
  # 10 s between restarts, logs in ~/Library/Logs/xoauth2-proxy.
  service do
    run [opt_bin/"xoauth2-proxy", "run", "--config", etc/"xoauth2-proxy/proxy.toml",
         "--log-dir", "#{Dir.home}/Library/Logs/xoauth2-proxy"]
    run_type :immediate
    keep_alive successful_exit: false
    restart_delay 10
    process_type :background
    log_path "#{Dir.home}/Library/Logs/xoauth2-proxy/stdout.log"
    error_log_path "#{Dir.home}/Library/Logs/xoauth2-proxy/stderr.log"
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/xoauth2-proxy --version")
    system bin/"xoauth2-proxy", "--config", pkgshare/"proxy.toml.example", "check-config"
  end
end
