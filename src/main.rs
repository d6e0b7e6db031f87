use linkd::kernel::crypto::EncryptionKey;
use linkd::ops::config::{Cli, Command};
use linkd::ops::server::{Server, shutdown_signal};
use linkd::ops::startup;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    if let Some(Command::GenKey) = cli.command {
        println!("{}", EncryptionKey::generate().to_base64());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Openapi) = cli.command {
        let document = linkd::api::rest::openapi_document();
        print!("{}", linkd::api::rest::openapi::document_json(&document));
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("linkd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = linkd::ops::telemetry::init(&cli.log)?;
    // Check the key before touching the database, so a bad key fails fast.
    let cipher = cli.shared.cipher()?;
    let catalog = startup::load_catalog(cli.shared.catalog_dir.as_deref())?;
    let serve_args = match cli.command {
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
        Some(command) => {
            let database = cli.shared.open().await?;
            let api = startup::api(
                database.pool.clone(),
                catalog,
                cipher,
                cli.serve.settings(cli.serve.listen),
            )?;
            return match command {
                Command::Migrate => {
                    tracing::info!("migrations applied");
                    Ok(())
                }
                Command::Admin(admin) => linkd::ops::admin::run(&api, admin).await,
                Command::Serve(_) | Command::GenKey | Command::Openapi => {
                    unreachable!("handled above")
                }
            };
        }
    };
    let listener = Server::bind(&serve_args).await?;
    let addr = listener.local_addr()?;
    let database = cli.shared.open().await?;
    let api = startup::api(
        database.pool.clone(),
        catalog,
        cipher,
        serve_args.settings(addr),
    )?;
    if database.local.is_some() {
        match startup::bootstrap_sandbox(&api).await? {
            Some(sandbox) => startup::print_sandbox_banner(&sandbox, addr),
            None => println!(
                "linkd: using the development database in {}; create another API key with `cargo run --release -- admin create-key --organization org_… --environment sandbox`",
                cli.shared.data_dir.display()
            ),
        }
    }
    let server = Server::new(listener, api, serve_args).await?;
    tracing::info!(%addr, "linkd serving gRPC and HTTP");
    println!("linkd listening on {addr} (gRPC and HTTP)");
    server.run(shutdown_signal()).await?;
    database.pool.close().await;
    drop(database); // stops the local Postgres this process started
    Ok(())
}
