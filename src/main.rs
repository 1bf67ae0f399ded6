//! The `meshlink` binary: parse the command line and hand over to the runtime.
#![forbid(unsafe_code)]

use clap::Parser;
use meshlink::runtime::{
    self,
    cli::{Cli, Command},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            runtime::init_tracing(args.log_format, &args.log_level)?;
            // Exits non-zero when a critical task ends, so Kubernetes restarts the pod.
            runtime::serve(args).await?.run().await
        }
        Command::Resolve(args) => meshlink::client::resolve::run(args).await,
        Command::Link(args) => runtime::link::run(args).await,
        Command::Mirror(args) => {
            runtime::init_tracing(args.log_format, &args.log_level)?;
            runtime::mirror::run(args).await
        }
        Command::Check(args) => match runtime::check::run(args).await? {
            true => Ok(()),
            false => std::process::exit(1),
        },
        Command::Crds => {
            print!(
                "{}---\n{}",
                meshlink::k8s::link::crd_yaml(),
                meshlink::k8s::profile::crd_yaml()
            );
            Ok(())
        }
    }
}
