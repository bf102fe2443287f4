//! The `tango` command: the daemon (`serve`, `manager`) and the client (every other
//! subcommand, see [`client`]).

mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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

#[derive(Subcommand)]
enum Command {
    /// Run the REST server (and, unless --no-manager, the job manager).
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
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
    #[command(flatten)]
    Client(client::ClientCommand),
}

/// Where the configuration comes from, and the few options worth a flag.
#[derive(Args)]
struct ConfigArgs {
    /// TOML configuration file (see config.example.toml). Without one, Tango's defaults.
    #[arg(long, short = 'c', env = "TANGO_CONFIG")]
    config: Option<PathBuf>,
    /// Port to listen on (server.port).
    #[arg(long, short = 'p')]
    port: Option<u16>,
    /// Address to listen on (server.bind).
    #[arg(long)]
    bind: Option<String>,
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

fn parse_store(s: &str) -> Result<StoreBackend, String> {
    match s {
        "memory" => Ok(StoreBackend::Memory),
        "redis" => Ok(StoreBackend::Redis),
        other => Err(format!("unknown store {other:?}; expected memory or redis")),
    }
}

impl ConfigArgs {
    fn load(&self) -> Result<Config, String> {
        let overrides = Overrides {
            port: self.port,
            bind: self.bind.clone(),
            store: self.store,
            vmms: self.vmms.clone(),
            log_level: self.log_level.clone(),
            courselabs: self.courselabs.clone(),
        };
        let config = Config::load(self.config.as_deref(), &overrides)
            .map_err(|e| format!("tango: config: {e}"))?;
        tango::vmms::check_name(&config.vmms.name)
            .map_err(|e| format!("tango: config: vmms.name: {e}"))?;
        Ok(config)
    }
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
        Command::Serve { config, no_manager } => config
            .load()
            .map_err(Failure::Config)
            .and_then(|config| runtime.block_on(tango::daemon::serve(config, !no_manager))),
        Command::Manager { config } => config
            .load()
            .map_err(Failure::Config)
            .and_then(|config| runtime.block_on(tango::daemon::manager(config))),
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
