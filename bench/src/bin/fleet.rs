//! `fleet --targets N [--port P]`: serves a synthetic fleet on loopback
//! until killed (see `vigil_bench::fleet` for the paths). Prints the address
//! it listens on.

use clap::Parser;
use vigil_bench::fleet::Fleet;

#[derive(Parser)]
struct Args {
    /// How many targets.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// The loopback port (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fleet = Fleet::new(args.targets);
    let addr = vigil_bench::serve(fleet.router(), args.port).await?;
    println!("http://{addr}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
