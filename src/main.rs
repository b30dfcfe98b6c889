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

/// vivgate: the Vivreal API's edge gateway.
#[derive(Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
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
    /// Run the gateway with a built-in backend and demo groups.
    Demo {
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
        #[arg(long, short = 'c')]
        config: PathBuf,
        #[arg(long, short = 'f')]
        file: PathBuf,
    },
    /// Print the table in Redis as a tenants file.
    Export {
        #[arg(long, short = 'c')]
        config: PathBuf,
    },
}

type Error = Box<dyn std::error::Error + Send + Sync>;

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
        // offers h2 and goes silent): client noise, and a cheap way to flood the log
        if m.target() == "pingora_core::apps" {
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
