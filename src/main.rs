use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them, and the first
/// touch of a huge page zeroes 2 MiB in one page fault: a reload of a million keys allocates a
/// few hundred MiB on its thread, and on a shared core those faults held the worker off long
/// enough to raise the p99 latency to 5-10 ms in the seconds they ran ("Reloads under load" in
/// benches/README.md). With 4 KiB pages the same work comes in steps short enough to interleave
/// with requests. Measured on the load harness, the request path costs the same either way.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!(
            "vivgate: could not turn transparent huge pages off: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A write past the file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) raises SIGXFSZ, whose default
/// action ends the process: the gateway would die on a usage-store flush instead of counting on
/// in memory and retrying, as it does when the disk is full. Ignored, the write fails with
/// EFBIG like any other write error (tests/chaos: the store under a file-size limit).
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        eprintln!(
            "vivgate: could not ignore SIGXFSZ: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// What the signals do: the end of `vivgate --help`, and a section of the man page.
const SIGNALS: [(&str, &str); 3] = [
    (
        "SIGHUP",
        "re-read the config and the tenants file (a bad one is refused, the old one kept)",
    ),
    (
        "SIGTERM",
        "stop: finish requests in flight (server.grace_period_seconds), flush usage, exit",
    ),
    (
        "SIGQUIT",
        "hand the listeners and the usage store to a process started with -u, then drain",
    ),
];

/// Where the Debian package puts things: the end of `vivgate --help`, and a man page section.
const FILES: [(&str, &str); 7] = [
    (
        "/etc/vivgate/vivgate.toml",
        "the config (README: Configuration reference)",
    ),
    (
        "/etc/vivgate/tenants.toml",
        "groups, tiers, statuses and key hashes",
    ),
    (
        "/var/lib/vivgate",
        "the usage store and the fleet copies (state_dir)",
    ),
    (
        "/var/log/vivgate",
        "for an access log (access_log.path); the unit may write there",
    ),
    ("/run/vivgate", "the pid file and the upgrade socket"),
    (
        "/usr/lib/systemd/system/vivgate.service",
        "the systemd unit",
    ),
    (
        "/usr/lib/vivgate/upgrade",
        "its zero-downtime upgrade (systemctl reload vivgate)",
    ),
];

fn after_help() -> String {
    let mut out = String::from("Signals:\n");
    for (signal, what) in SIGNALS {
        out.push_str(&format!("  {signal:<9}{what}\n"));
    }
    out.push_str("\nFiles (Debian package):\n");
    for (path, what) in FILES {
        out.push_str(&format!("  {path}\n      {what}\n"));
    }
    out
}

/// vivgate: the Vivreal API's edge gateway.
#[derive(Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_long_help = after_help()
)]
struct Cli {
    /// Run the gateway with this config file.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Take over the listening sockets of a running vivgate (zero-downtime upgrade).
    #[arg(long, short = 'u')]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and the tenants file it names.
    Check {
        /// The config file (vivgate.toml).
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// Read an API key on stdin and print the hash the tenants file stores.
    HashKey,
    /// The tenant table in Redis (for configs with `tenants = "redis://…"`).
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Is the gateway of this config serving? Asks the admin listener's /healthz (exit 0 when
    /// serving, 1 otherwise); for a container's health check.
    Healthz {
        /// The gateway's config file: its admin listener (or public listener) is asked.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for vivgate.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print vivgate's man page (roff), generated from this command line's definition.
    Man {
        /// Write every page instead (vivgate.1 and one per subcommand, vivgate-keys-new.1 …)
        /// into this directory (made if missing).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the upgrade socket of a config (server.upgrade_sock), for scripts that upgrade.
    UpgradeSocket {
        /// The gateway's config file.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
    /// API keys: mint one for a group, or check one offline.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the gateway with a built-in backend and demo groups.
    Demo {
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The admin API and console (loopback, with a token printed at start).
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin: SocketAddr,
    },
}

#[derive(Subcommand)]
enum TenantsCommand {
    /// Validate a tenants file against the config, then replace the table in Redis with it in
    /// one transaction (every instance applies it within a second).
    Push {
        /// The config whose `tenants = "redis://…"` names the Redis.
        #[arg(long, short = 'c')]
        config: PathBuf,
        /// The tenants file to push (TOML or .tsv).
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Print the table in Redis as a tenants file.
    Export {
        /// The config whose `tenants = "redis://…"` names the Redis.
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Mint a key for a group: 256 random bits from the OS, a prefix and a checksum. Prints the
    /// key (once: vivgate keeps only its hash) and its sha256: hash.
    New {
        /// The group the key is for.
        #[arg(long)]
        group: String,
        /// The key's prefix (default: the config's first checksum prefix, or vgk_).
        #[arg(long)]
        prefix: Option<String>,
        /// Add the hash to the group in this tenants file (TOML or .tsv, written atomically).
        #[arg(long, conflicts_with = "config")]
        tenants: Option<PathBuf>,
        /// Add the hash where this config keeps its tenants: its tenants file, or the fleet's
        /// table in Redis (one transaction, announced to every instance).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Read a key from the first line of standard input (never the command line, which other
    /// users can see) and tell, offline, whether it is a well-formed vivgate key.
    Check {
        /// Take the checksum prefixes from this config (default: vgk_).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The command line as the man pages show it: built, without the `help` subcommand.
fn man_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command()
        .disable_help_subcommand(true)
        .after_long_help(None::<&'static str>);
    cmd.build();
    cmd
}

/// vivgate(1): clap_mangen's sections, then SIGNALS and FILES as tagged paragraphs.
fn main_man_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap_mangen::roff::{bold, roman, Roff};
    let man = clap_mangen::Man::new(man_command());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    let mut roff = Roff::default();
    for (title, entries) in [("SIGNALS", &SIGNALS[..]), ("FILES", &FILES[..])] {
        roff.control("SH", [title]);
        for (name, what) in entries {
            roff.control("TP", []);
            roff.text([bold(*name)]);
            roff.text([roman(*what)]);
        }
    }
    roff.to_writer(w)?;
    man.render_version_section(w)
}

/// Every page: vivgate.1 and one per subcommand (vivgate-keys-new.1 …), into `dir` (made if
/// missing).
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    fn subcommand_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            subcommand_pages(sub, dir)?;
            clap_mangen::Man::new(sub.clone()).generate_to(dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let cmd = man_command();
    subcommand_pages(&cmd, dir)?;
    let mut page = std::fs::File::create(dir.join("vivgate.1"))?;
    main_man_page(&mut page)?;
    page.sync_all()
}

fn keys(command: KeysCommand) -> Result<(), Error> {
    use vivgate::keys::checksum::{self, Verdict};
    use vivgate::keys::enroll::{self, Target};
    match command {
        KeysCommand::New {
            group,
            prefix,
            tenants,
            config,
        } => {
            let from_config = config.as_deref().map(enroll::config_tenants).transpose()?;
            let prefix = prefix
                .or_else(|| {
                    from_config
                        .as_ref()
                        .and_then(|c| c.checksum_prefixes.first().cloned())
                })
                .unwrap_or_else(|| checksum::DEFAULT_PREFIX.to_string());
            if !checksum::valid_prefix(&prefix) {
                return Err(format!(
                    "--prefix {prefix:?}: 2 to 16 letters, digits, '_', '-' or '.'"
                )
                .into());
            }
            if let Some(c) = &from_config {
                if !c.checksum_prefixes.contains(&prefix) {
                    eprintln!("warning: {prefix:?} is not in the config's keys.checksum_prefixes: the gateway will not check this key's checksum");
                }
            }
            let key = checksum::mint(&prefix)?;
            let hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(key.as_bytes()));
            let target = match (tenants, from_config) {
                (Some(path), _) => Some(Target::File(path)),
                (None, Some(c)) => Some(c.target),
                (None, None) => None,
            };
            // the tenants first: a key is printed only once it is on its way to the gateway
            match &target {
                Some(Target::File(path)) => {
                    enroll::add_to_file(path, &group, &hash)?;
                    eprintln!(
                        "added to group {group} in {}: run `vivgate check`, then reload (SIGHUP or POST /reload)",
                        path.display()
                    );
                }
                Some(Target::Redis(url)) => {
                    let version = vivgate::fleet::add_key(url, &group, &hash)?;
                    eprintln!("added to group {group} in the fleet's tenants (version {version}): every instance accepts it within a second");
                }
                None => eprintln!(
                    "add the hash to group {group}'s keys in the tenants file, then reload"
                ),
            }
            println!("{key}\n{hash}");
            eprintln!("the key is shown once: hand it over now; vivgate keeps only its hash");
        }
        KeysCommand::Check { config } => {
            let prefixes: Vec<String> = match config {
                Some(c) => enroll::config_tenants(&c)?.checksum_prefixes,
                None => vec![checksum::DEFAULT_PREFIX.to_string()],
            };
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            // the first line: `vivgate keys new > key.txt` writes the key, then its hash
            let line = input.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let key = line.strip_suffix(b"\r").unwrap_or(line);
            let bytes: Vec<Box<[u8]>> = prefixes.iter().map(|p| p.as_bytes().into()).collect();
            match checksum::verify(key, &bytes) {
                Verdict::Valid => {
                    println!("valid: a well-formed vivgate key (prefix and checksum)")
                }
                Verdict::Invalid(why) => return Err(format!("invalid: {why}").into()),
                Verdict::NotChecked => {
                    return Err(format!(
                        "not a vivgate key: it has no checksum prefix ({})",
                        prefixes.join(", ")
                    )
                    .into())
                }
            }
        }
    }
    Ok(())
}

fn tenants(command: TenantsCommand) -> Result<(), Error> {
    match command {
        TenantsCommand::Push { config, file } => {
            let (url, tenants) = vivgate::config::check_tenants_for_push(&config, &file)?;
            let version = vivgate::fleet::push(&url, &tenants)?;
            println!(
                "{}: {} groups pushed to {url} (version {version})",
                file.display(),
                tenants.groups.len()
            );
        }
        TenantsCommand::Export { config } => {
            let url = vivgate::config::tenants_url(&config)?;
            let (tenants, version) = vivgate::fleet::read(&url)?;
            print!(
                "# exported from {url}, version {version}\n{}",
                vivgate::fleet::to_toml(&tenants)
            );
        }
    }
    Ok(())
}

fn init_logging() {
    // pingora logs raw malformed requests and request headers at debug and trace level, and h2
    // traces decoded header fields (an API key can be in them): these targets stay at info
    // whatever RUST_LOG says.
    let user = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{user},pingora=info,pingora_core=info,pingora_proxy=info,pingora_http=info,\
         pingora_pool=info,pingora_load_balancing=info,pingora_limits=info,h2=info,\
         rustls=info,tokio_rustls=info"
    ))
    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // a directive for a module (`pingora_proxy::proxy_h1=debug`) would beat the crate-level
    // pins above: this cap holds whatever the directives say
    const CAPPED: [&str; 4] = ["pingora", "h2", "rustls", "tokio_rustls"];
    let pingora_cap = tracing_subscriber::filter::filter_fn(|m| {
        // pingora_core::apps logs one ERROR line per failed HTTP/2 handshake (a client that
        // offers h2 and goes silent): client noise, and a cheap way to flood the log. Its
        // http_app (the admin listener, the demo's backend) logs a client that left with the
        // request's method, path and query ("… GET /slow/report?ms=3000"): no query value goes
        // to the log, so those go too
        if m.target() == "pingora_core::apps" || m.target() == "pingora_core::apps::http_app" {
            return false;
        }
        // pingora_load_balancing logs a server's health flip with the connect error, which
        // dumps the peer's options (~1.5 KB); vivgate logs the flip in one line itself
        if m.target() == "pingora_load_balancing" && *m.level() > tracing::Level::ERROR {
            return false;
        }
        *m.level() <= tracing::Level::INFO
            || !CAPPED.iter().any(|c| {
                m.target()
                    .strip_prefix(c)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', ':']))
            })
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(pingora_cap)
        .init();
}

/// A panic is reported with its thread and location; its message only when it is a literal.
/// A formatted message is withheld: it could quote request data (a key, a query value).
fn init_panic_report() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&'static str>()
            .copied()
            .unwrap_or("(message withheld: it may quote request data)");
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        eprintln!(
            "vivgate: panic in thread {} at {at}: {msg}",
            thread.name().unwrap_or("?")
        );
    }));
}

fn main() -> ExitCode {
    init_panic_report();
    no_transparent_huge_pages();
    ignore_file_size_signal();
    let cli = Cli::parse();
    if cli.command.is_none() && cli.config.is_none() {
        eprintln!("error: give --config FILE to run the gateway, or a command (see --help)");
        return ExitCode::from(2);
    }
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Some(Command::Check { config }) => {
            let snap = vivgate::config::load(&config)?;
            println!(
                "{}: ok ({} method and path pairs routed, {} upstreams, {} groups, {} keys, \
                 {} TLS listeners with {} certificates)",
                config.display(),
                snap.routes.len(),
                snap.upstreams.len(),
                snap.groups.len(),
                snap.keys.len(),
                snap.startup.tls_listeners.len(),
                snap.tls_certs.count()
            );
        }
        Some(Command::HashKey) => {
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .map_err(|e| format!("cannot read stdin: {e}"))?;
            println!("{}", vivgate::keys::hash_key_input(&input)?);
        }
        Some(Command::Tenants { command }) => tenants(command)?,
        Some(Command::Keys { command }) => keys(command)?,
        Some(Command::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "vivgate",
                &mut std::io::stdout(),
            );
        }
        Some(Command::Man { dir }) => match dir {
            Some(dir) => write_man_pages(&dir)
                .map_err(|e| format!("cannot write the man pages to {}: {e}", dir.display()))?,
            None => main_man_page(&mut std::io::stdout())
                .map_err(|e| format!("cannot write the man page: {e}"))?,
        },
        Some(Command::UpgradeSocket { config }) => {
            let snap = vivgate::config::load(&config)?;
            println!("{}", snap.startup.upgrade_sock.display());
        }
        Some(Command::Healthz { config, timeout_ms }) => {
            let seen =
                vivgate::healthz::probe(&config, std::time::Duration::from_millis(timeout_ms))?;
            println!("{seen}");
        }
        Some(Command::Demo { listen, admin }) => {
            init_logging();
            vivgate::demo::run(listen, admin).map_err(|e| e.to_string())?;
        }
        None => {
            let config = cli.config.expect("checked in main");
            init_logging();
            let options = vivgate::Options {
                upgrade: cli.upgrade,
                ..Default::default()
            };
            vivgate::run(&config, options, vivgate::Shutdown::Signals)?;
        }
    }
    Ok(())
}
