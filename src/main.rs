//! The `tango` command: the daemon (`serve`, `manager`), its configuration (`config
//! check`), shell completions, and the client (every other subcommand, see [`client`]).

mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tango::config::{Config, Overrides, StoreBackend};
use tango::daemon::Failure;

/// See Cargo.toml: measured, glibc's allocator cost a sixth of an addJob's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tango",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("TANGO_COMMIT"), ")"),
    about = "Autolab's Tango autograding daemon, in Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the REST server (and, unless --no-manager, the job manager).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        listen: ListenArgs,
        /// Do not run jobs in this process; `tango manager` processes sharing the same Redis
        /// run them.
        #[arg(long)]
        no_manager: bool,
    },
    /// Run only the job manager (needs the Redis store).
    Manager {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// The configuration: `tango config check` validates it and shows where each value
    /// comes from.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    #[command(flatten)]
    Client(client::ClientCommand),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the configuration `tango serve` would use (same file, environment and
    /// flags); print every value (secrets masked) with its source. Exit 78 on an error.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        listen: ListenArgs,
    },
}

/// Where the configuration comes from, and the few options worth a flag.
#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (see config.example.toml). Without one, Tango's defaults.
    #[arg(long, short = 'c', env = "TANGO_CONFIG")]
    config: Option<PathBuf>,
    /// Job store: memory or redis (store.backend).
    #[arg(long, value_parser = parse_store)]
    store: Option<StoreBackend>,
    /// Machine backend (vmms.name); an unknown name is refused with the list of known ones.
    #[arg(long)]
    vmms: Option<String>,
    /// Log level (log.level).
    #[arg(long)]
    log_level: Option<String>,
    /// Courselabs directory (server.courselabs).
    #[arg(long)]
    courselabs: Option<PathBuf>,
}

/// Where the REST server listens (not for `tango manager`, which does not).
#[derive(Args, Default)]
struct ListenArgs {
    /// Port to listen on (server.port; `-P` as the client takes it).
    #[arg(long, short = 'p', visible_short_alias = 'P')]
    port: Option<u16>,
    /// Address to listen on (server.bind).
    #[arg(long)]
    bind: Option<String>,
}

fn parse_store(s: &str) -> Result<StoreBackend, String> {
    match s {
        "memory" => Ok(StoreBackend::Memory),
        "redis" => Ok(StoreBackend::Redis),
        other => Err(format!("unknown store {other:?}; expected memory or redis")),
    }
}

impl ConfigArgs {
    fn overrides(&self, listen: &ListenArgs) -> Overrides {
        Overrides {
            port: listen.port,
            bind: listen.bind.clone(),
            store: self.store,
            vmms: self.vmms.clone(),
            log_level: self.log_level.clone(),
            courselabs: self.courselabs.clone(),
        }
    }

    /// The configuration `serve` runs with; errors are the one line it prints.
    fn load(&self, listen: &ListenArgs) -> Result<Config, Failure> {
        let config = Config::load(self.config.as_deref(), &self.overrides(listen))
            .map_err(|e| Failure::Config(format!("tango: config: {e}")))?;
        tango::vmms::check_name(&config.vmms.name)
            .map_err(|e| Failure::Config(format!("tango: config: vmms.name: {e}")))?;
        Ok(config)
    }

    /// The dotted keys set by flags, and the flags that set them.
    fn flags(&self, listen: &ListenArgs) -> Vec<(&'static str, &'static str)> {
        [
            (listen.port.is_some(), "server.port", "--port"),
            (listen.bind.is_some(), "server.bind", "--bind"),
            (self.store.is_some(), "store.backend", "--store"),
            (self.vmms.is_some(), "vmms.name", "--vmms"),
            (self.log_level.is_some(), "log.level", "--log-level"),
            (
                self.courselabs.is_some(),
                "server.courselabs",
                "--courselabs",
            ),
        ]
        .into_iter()
        .filter(|(given, _, _)| *given)
        .map(|(_, key, flag)| (key, flag))
        .collect()
    }
}

/// `tango config check`: what `serve` would run with, value by value, or its error.
fn config_check(args: &ConfigArgs, listen: &ListenArgs) -> Result<(), Failure> {
    let config = args.load(listen)?;
    let path = args.config.as_ref().map(|p| p.display().to_string());
    let text = match &args.config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            Failure::Config(format!("tango: config: cannot read {}: {e}", p.display()))
        })?,
        None => String::new(),
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let flags = args.flags(listen);
    let given = tango::provenance::Given {
        file: path.as_deref().map(|p| (p, text.as_str())),
        env: &env,
        flags: &flags,
    };
    let mut out = String::new();
    for notice in config.notices() {
        out.push_str(&format!("# notice: {notice}\n"));
    }
    for entry in tango::provenance::report(&config, &given) {
        out.push_str(&format!(
            "{} = {}  # {}\n",
            entry.key, entry.value, entry.source
        ));
    }
    out.push_str("# configuration OK\n");
    print_quietly(&out);
    Ok(())
}

/// Prints `text`; a reader that went away (`| head`) is not an error.
fn print_quietly(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tango: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            no_manager,
        } => config
            .load(&listen)
            .and_then(|config| runtime.block_on(tango::daemon::serve(config, !no_manager))),
        Command::Manager { config } => config
            .load(&ListenArgs::default())
            .and_then(|config| runtime.block_on(tango::daemon::manager(config))),
        Command::Config {
            action: ConfigAction::Check { config, listen },
        } => config_check(&config, &listen),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tango", &mut script);
            print_quietly(&String::from_utf8_lossy(&script));
            Ok(())
        }
        Command::Client(command) => return runtime.block_on(client::main(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
