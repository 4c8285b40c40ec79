//! `hoist login` and `hoist logout`, and the credentials and transport every command that talks
//! to a registry gets from the global flags.

use std::io::IsTerminal;

use clap::Args;
use hoist::registry::auth::{self, CredentialOptions};
use hoist::registry::{Credential, Credentials, RegistryClient, TransportOptions};
use hoist::Error;

use super::GlobalArgs;

#[derive(Args)]
pub struct LoginArgs {
    /// The registry host, e.g. registry.example.com or localhost:5000.
    registry: String,
}

#[derive(Args)]
pub struct LogoutArgs {
    registry: String,
}

/// The credential options the global flags give (the password read from stdin once).
fn credential_options(global: &GlobalArgs) -> Result<CredentialOptions, Error> {
    static PASSWORD: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let password = PASSWORD.get_or_init(|| {
        if !global.password_stdin {
            return None;
        }
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).ok()?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    });
    if global.password_stdin && password.as_deref().is_none_or(str::is_empty) {
        return Err(Error::Usage(
            "--password-stdin read no password from standard input".into(),
        ));
    }
    Ok(CredentialOptions {
        username: global.username.clone(),
        password: password.clone(),
        registry_config: global.registry_config.clone(),
    })
}

pub(super) fn credentials(registry: &str, global: &GlobalArgs) -> Result<Credentials, Error> {
    auth::resolve(registry, &credential_options(global)?).map_err(|e| Error::Usage(e.to_string()))
}

pub(super) fn transport(global: &GlobalArgs) -> TransportOptions {
    TransportOptions {
        plain_http: global.plain_http.then_some(true),
        insecure: global.insecure,
        ca_file: global.ca_file.clone(),
        max_connections: 16,
        connect_timeout: None,
        read_timeout: None,
    }
}

pub(super) async fn login(args: LoginArgs, global: &GlobalArgs) -> Result<(), Error> {
    let registry = auth::config::normalize(&args.registry);
    let mut opts = credential_options(global)?;
    let interactive = std::io::stdin().is_terminal();
    let username = match opts.username.clone() {
        Some(u) => u,
        None if interactive => {
            eprint!("Username: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Error::Usage(e.to_string()))?;
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
        None if interactive => {
            rpassword::prompt_password("Password: ").map_err(|e| Error::Usage(e.to_string()))?
        }
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
        &transport(global),
        Credentials::new(credential, "the given username and password"),
    )?;
    client.ping().await?;
    opts.username = Some(username.clone());
    let saved = auth::config::save(&opts, &registry, &username, &password)
        .map_err(|e| Error::Usage(e.to_string()))?;
    println!("Login Succeeded: credentials for {registry} saved in {saved}");
    Ok(())
}

pub(super) fn logout(args: LogoutArgs, global: &GlobalArgs) -> Result<(), Error> {
    let registry = auth::config::normalize(&args.registry);
    let opts = CredentialOptions {
        registry_config: global.registry_config.clone(),
        ..Default::default()
    };
    if auth::config::erase(&opts, &registry).map_err(|e| Error::Usage(e.to_string()))? {
        println!("Removed the credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(())
}
