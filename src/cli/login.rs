//! `hoist login` and `hoist logout`.

use std::io::IsTerminal;

use clap::Args;
use hoist::registry::auth::{self, CredentialOptions};
use hoist::registry::{Credential, Credentials, RegistryClient};
use hoist::Error;

use super::global::Env;

#[derive(Args)]
pub struct LoginArgs {
    /// The registry host, e.g. registry.example.com or localhost:5000.
    registry: String,
}

#[derive(Args)]
pub struct LogoutArgs {
    /// The registry host whose saved credentials to remove.
    registry: String,
}

pub(super) async fn login(args: LoginArgs, env: &Env) -> Result<(), Error> {
    let registry = auth::config::normalize(&args.registry);
    let mut opts = env.ctx.settings().credentials.clone();
    let interactive = std::io::stdin().is_terminal();
    let username = match opts.username.clone() {
        Some(u) => u,
        None if interactive => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Error::Usage(format!("reading the username: {e}")))?;
            line.trim().to_string()
        }
        None => {
            return Err(Error::Usage(
                "no username: pass --username (and --password-stdin)".into(),
            ))
        }
    };
    let password = match opts.password.clone() {
        Some(p) => p,
        None if interactive => rpassword::prompt_password("Password: ")
            .map_err(|e| Error::Usage(format!("reading the password: {e}")))?,
        None => {
            return Err(Error::Usage(
                "no password: pass it on standard input with --password-stdin".into(),
            ))
        }
    };
    let credential = Credential::Password {
        username: username.clone(),
        password: password.clone(),
    };
    let client = RegistryClient::new(
        &registry,
        &env.ctx.settings().transport,
        Credentials::new(credential, "the given username and password"),
    )?;
    client.ping().await?;
    opts.username = Some(username.clone());
    let saved = auth::config::save(&opts, &registry, &username, &password)?;
    println!("Login Succeeded: credentials for {registry} saved in {saved}");
    Ok(())
}

pub(super) fn logout(args: LogoutArgs, env: &Env) -> Result<(), Error> {
    let registry = auth::config::normalize(&args.registry);
    let opts = CredentialOptions {
        registry_config: env.ctx.settings().credentials.registry_config.clone(),
        ..Default::default()
    };
    if auth::config::erase(&opts, &registry)? {
        println!("Removed the credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}
