//! `tributary users add|remove|list`: SCRAM users in the metadata store,
//! for the first user (before any broker runs) and for scripts. Brokers
//! read credentials at each authentication, so a change applies to the
//! next login on every broker.
//!
//! A password never comes from the command line (other users of the
//! machine could read it in the process list): `--password-file FILE`
//! (its first line), else `TRIBUTARY_USER_PASSWORD`, else the first line
//! of standard input.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tributary_broker::sasl::scram;
use tributary_meta::open_metadata;

use crate::config::{ServeArgs, Settings, StoreArgs};

/// Shortest password accepted.
const MIN_PASSWORD: usize = 8;

#[derive(Args, Debug)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub command: UsersCommand,
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user or change its password.
    Add {
        name: String,
        /// SCRAM-SHA-512 or SCRAM-SHA-256; repeat for both [default: both].
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        /// File whose first line is the password [default: $TRIBUTARY_USER_PASSWORD, else stdin].
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PBKDF2 iterations (4096-16384) [default: 8192].
        #[arg(long, default_value_t = 8192)]
        iterations: i32,
        #[command(flatten)]
        stores: StoreArgs,
    },
    /// Remove a user's credentials (one mechanism, or all).
    Remove {
        name: String,
        #[arg(long)]
        mechanism: Option<String>,
        #[command(flatten)]
        stores: StoreArgs,
    },
    /// List users and their mechanisms.
    List {
        #[command(flatten)]
        stores: StoreArgs,
    },
}

impl UsersCommand {
    fn stores(&self) -> &StoreArgs {
        match self {
            UsersCommand::Add { stores, .. }
            | UsersCommand::Remove { stores, .. }
            | UsersCommand::List { stores } => stores,
        }
    }
}

fn mechanisms(names: &[String]) -> anyhow::Result<Vec<scram::Mechanism>> {
    if names.is_empty() {
        return Ok(scram::Mechanism::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            scram::Mechanism::parse(n).with_context(|| {
                format!("unknown mechanism {n:?}: expected SCRAM-SHA-512 or SCRAM-SHA-256")
            })
        })
        .collect()
}

fn password(file: Option<&PathBuf>) -> anyhow::Result<String> {
    let line = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --password-file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        None => match std::env::var("TRIBUTARY_USER_PASSWORD") {
            Ok(p) => p,
            Err(_) => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from stdin")?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            }
        },
    };
    if line.chars().count() < MIN_PASSWORD {
        bail!("the password must have at least {MIN_PASSWORD} characters");
    }
    Ok(line)
}

pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(ServeArgs {
        stores: args.command.stores().clone(),
        ..ServeArgs::default()
    })?;
    if let Some(parent) = settings
        .metadata
        .strip_prefix("sqlite://")
        .and_then(|p| std::path::Path::new(p).parent())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let store = open_metadata(&settings.metadata)
        .await
        .context("cannot open the metadata store")?;
    match args.command {
        UsersCommand::Add {
            name,
            mechanisms: names,
            password_file,
            iterations,
            ..
        } => {
            if name.is_empty() {
                bail!("the user name is empty");
            }
            if !(scram::MIN_ITERATIONS..=scram::MAX_ITERATIONS).contains(&iterations) {
                bail!(
                    "--iterations must be between {} and {}",
                    scram::MIN_ITERATIONS,
                    scram::MAX_ITERATIONS
                );
            }
            let mechanisms = mechanisms(&names)?;
            let password = password(password_file.as_ref())?;
            for m in mechanisms {
                let credential = scram::credential_from_password(m, &password, iterations);
                store.put_scram_credential(&name, &credential).await?;
                println!("{name}: {} ({iterations} iterations)", m.name());
            }
        }
        UsersCommand::Remove {
            name, mechanism, ..
        } => {
            let mechanisms = mechanisms(mechanism.as_slice())?;
            let mut removed = 0;
            for m in mechanisms {
                if store.delete_scram_credential(&name, m.name()).await? {
                    println!("{name}: {} removed", m.name());
                    removed += 1;
                }
            }
            if removed == 0 {
                bail!("user {name} has no such credential");
            }
        }
        UsersCommand::List { .. } => {
            for (user, mechanism, iterations) in store.list_scram_credentials().await? {
                println!("{user}\t{mechanism}\t{iterations}");
            }
        }
    }
    Ok(())
}
