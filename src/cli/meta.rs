//! What the command line says about itself: shell completions and man pages, generated from
//! the same clap definitions the parser uses (so they cannot drift from the flags), and the
//! long version (commit and features, from `build.rs`).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, CommandFactory};
use hoist::Error;

/// `hoist --version`: the version, the commit it was built from and the cargo features.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HOIST_BUILD_COMMIT"),
    "; features: ",
    env!("HOIST_BUILD_FEATURES"),
    ")"
);

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write `hoist.1` and a page per command (`hoist-pull.1`, …) into this folder; without
    /// it, print `hoist.1`.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `hoist completions SHELL`: the completion script on stdout (`source <(hoist completions bash)`).
pub fn completions(args: CompletionsArgs) -> Result<(), Error> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "hoist", &mut out);
    print_bytes(&out)
}

/// `hoist man [--out DIR]`: roff pages for `man -l`.
pub fn man(args: ManArgs) -> Result<(), Error> {
    let cmd = super::Cli::command();
    let Some(dir) = args.out else {
        let mut out = Vec::new();
        render(&cmd, "hoist", &mut out)?;
        return print_bytes(&out);
    };
    std::fs::create_dir_all(&dir).map_err(|source| write_error(dir.clone(), source))?;
    let mut pages = vec![("hoist".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("hoist-{}", sub.get_name());
        let bin_name = format!("hoist {}", sub.get_name());
        pages.push((name.clone(), sub.clone().name(name).bin_name(bin_name)));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        render(&page, &name, &mut out)?;
        std::fs::write(&path, out).map_err(|source| write_error(path.clone(), source))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn render(cmd: &clap::Command, title: &str, out: &mut Vec<u8>) -> Result<(), Error> {
    clap_mangen::Man::new(cmd.clone())
        .title(title.to_uppercase())
        .render(out)
        .map_err(|source| write_error("a man page".into(), source))
}

/// `bytes` on stdout; a reader that went away (`| head`) ends the process quietly, as the
/// other commands do.
fn print_bytes(bytes: &[u8]) -> Result<(), Error> {
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        result => result.map_err(|source| write_error("stdout".into(), source)),
    }
}

fn write_error(path: PathBuf, source: std::io::Error) -> Error {
    Error::Write {
        what: "man page",
        path,
        source,
    }
}
