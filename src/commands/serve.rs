//! `medkg serve` and `medkg token`, and the server options `medkg run
//! --serve` shares with them.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use medkg_dataflow::Progress;
use medkg_serve::{Auth, Limits, ServeOptions, Server};

use crate::cli::{ServeArgs, ServerArgs, TokenArgs};

/// A server's options from its arguments.
pub fn options(
    data_dir: &Path,
    addr: std::net::SocketAddr,
    tenant: &str,
    args: &ServerArgs,
    live: Option<Arc<Progress>>,
) -> anyhow::Result<ServeOptions> {
    let auth = args.auth.as_deref().map(Auth::load).transpose()?;
    if auth.as_ref().is_some_and(Auth::is_empty) {
        bail!("--auth {}: the file lists no tokens", args.auth.as_deref().unwrap_or(Path::new("")).display());
    }
    if args.max_searches == 0 || args.sparql_timeout == 0 {
        bail!("--max-searches and --sparql-timeout must be at least 1");
    }
    let limits = Limits {
        max_searches: args.max_searches,
        sparql_timeout: Duration::from_secs(args.sparql_timeout),
        ..Limits::default()
    };
    Ok(ServeOptions { auth, tenant: tenant.to_string(), limits, live, ..ServeOptions::new(data_dir, addr) })
}

/// Starts a server beside a run of this process.
pub fn start_beside_run(
    data_dir: &Path,
    addr: std::net::SocketAddr,
    tenant: &str,
    args: &ServerArgs,
    progress: &Arc<Progress>,
) -> anyhow::Result<Server> {
    let server = medkg_serve::start(options(data_dir, addr, tenant, args, Some(progress.clone()))?)?;
    eprintln!("medkg: serving at http://{}/ while the run runs", server.addr());
    Ok(server)
}

/// `medkg serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let server = medkg_serve::start(options(&args.data_dir, args.addr, &args.tenant, &args.server, None)?)?;
    eprintln!("medkg: serving {} at http://{}/ (SIGTERM or Ctrl-C stops)", args.data_dir.display(), server.addr());
    server.wait_for_signal()
}

/// `medkg token`.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let role = match args.role.as_str() {
        "read" | "admin" => args.role.as_str(),
        other => bail!("--role `{other}`: read or admin"),
    };
    if !medkg_serve::auth::valid_tenant(&args.tenant) {
        bail!("--tenant `{}` is not a tenant name (letters, digits, -_.)", args.tenant);
    }
    let token = medkg_serve::auth::new_token();
    eprintln!("token (shown once; give it to the client, keep only the hash):");
    println!("{token}");
    eprintln!("\nadd to the --auth file, under `tokens:`:");
    let name = args.name.map(|n| format!("  - name: {}\n    ", serde_json::to_string(&n).unwrap_or_default()));
    eprintln!(
        "{}sha256: {}\n    tenant: {}\n    role: {role}",
        name.unwrap_or_else(|| "  - ".into()),
        medkg_serve::auth::hash_token(&token),
        args.tenant
    );
    Ok(())
}
