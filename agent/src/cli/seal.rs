//! `vaultlet seal`: encrypt a plaintext document with Transit and store the
//! ciphertext in a managed Kubernetes Secret (the seeds' encryptonator), bound
//! to that Secret and data key: a copy of it decrypts nowhere else.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::ValueEnum;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use vaultlet_client::reference::{is_data_key, is_dns_label, is_dns_subdomain};
use zeroize::Zeroizing;

use super::CmdResult;
use super::vault::{VaultArgs, ensure_derived_key};
use crate::source::kube::convention::{
    self, ALLOWED_SERVICE_ACCOUNTS, BINDING, BINDING_V1, Binding, FORMAT, MANAGED_LABEL, TRANSIT_KEY,
};
use vaultlet_parse::document::{Document, Format, MAX_DOCUMENT_BYTES};

/// Attempts at writing the Secret when someone else changes it meanwhile.
const WRITE_ATTEMPTS: usize = 5;

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Json,
    Yaml,
    Env,
    Raw,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Json => Format::Json,
            FormatArg::Yaml => Format::Yaml,
            FormatArg::Env => Format::Env,
            FormatArg::Raw => Format::Raw,
        }
    }
}

/// Encrypt a plaintext secrets document with Transit and store only the
/// ciphertext in a Kubernetes Secret labeled for vaultlet.
///
/// The document is checked first (it must parse as --format); the plaintext is
/// never written anywhere nor printed. Other data keys of an existing Secret are
/// kept. Authenticates to Vault with VAULT_TOKEN or --vault-auth-role.
///
/// The ciphertext is bound to its place: Transit encrypts it with a key derived
/// from `vaultlet/v1/NAMESPACE/NAME/DATA_KEY`, so it decrypts in this Secret and
/// data key only. A missing Transit key is created as a derived key; an
/// existing key that is not derived is refused (move its Secrets to a derived
/// key with `vaultlet recrypt --bind`).
///
/// Example: `vaultlet seal -n payments --name db --transit-key payments --allow api secrets.json`
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    vault: VaultArgs,

    /// Namespace of the Secret.
    #[arg(long, short = 'n')]
    namespace: String,

    /// Name of the Secret.
    #[arg(long)]
    name: String,

    /// Transit key to encrypt with (recorded in the vaultlet.io/transit-key annotation).
    #[arg(long)]
    transit_key: String,

    /// Data key of the Secret to store the ciphertext under [default: secrets.json,
    /// secrets.yaml, secrets.env or secrets, by format].
    #[arg(long)]
    data_key: Option<String>,

    /// How the document is parsed when served.
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,

    /// Service accounts of the namespace that may read it, comma-separated
    /// (replaces the annotation; without it an existing list is kept).
    #[arg(long, value_delimiter = ',')]
    allow: Option<Vec<String>>,

    /// The plaintext document; `-` reads standard input.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

pub async fn run(args: Args) -> CmdResult {
    super::install_crypto_provider();
    let format = args.format.format();
    let data_key = args.data_key.clone().unwrap_or_else(|| match format {
        Format::Raw => "secrets".into(),
        f => format!("secrets.{}", f.name()),
    });
    check_names(&args, &data_key)?;

    let plaintext = read_plaintext(&args.file)?;
    Document::parse(format, plaintext.to_vec()).map_err(|e| format!("{}: {e}", args.file.display()))?;

    let transit = args.vault.transit()?;
    ensure_derived_key(&transit, &args.transit_key).await?;
    let place = convention::place(&args.namespace, &args.name, &data_key);
    let ciphertext = transit.encrypt(&args.transit_key, &plaintext, Some(&place)).await?;
    drop(plaintext);
    let key_version = crate::transit::key_version(&ciphertext).unwrap_or(0);

    let kube =
        kube::Client::try_default().await.map_err(|e| format!("Kubernetes client: {}", super::kube_error(&e)))?;
    let api: Api<Secret> = Api::namespaced(kube, &args.namespace);
    let outcome = write(&api, &args, &data_key, format, &ciphertext).await?;
    println!(
        "sealed {}/{}:{data_key} with transit key {} (v{key_version}): {outcome}",
        args.namespace, args.name, args.transit_key
    );
    if args.allow.is_none() && outcome == "created" {
        println!("note: no --allow given, so no service account may read it yet");
    }
    Ok(())
}

fn check_names(args: &Args, data_key: &str) -> Result<(), String> {
    if !is_dns_label(&args.namespace) {
        return Err(format!("--namespace {:?} is not a namespace name", args.namespace));
    }
    if !is_dns_subdomain(&args.name) {
        return Err(format!("--name {:?} is not a Secret name (lowercase letters, digits, '-', '.')", args.name));
    }
    if !is_data_key(data_key) {
        return Err(format!("--data-key {data_key:?} is not a Secret data key (letters, digits, '-', '_', '.')"));
    }
    if !convention::is_key_name(&args.transit_key) {
        return Err(format!("--transit-key {:?} is not a Transit key name", args.transit_key));
    }
    if let Some(bad) = args.allow.iter().flatten().find(|sa| !is_dns_subdomain(sa)) {
        return Err(format!("--allow {bad:?} is not a service account name"));
    }
    Ok(())
}

fn read_plaintext(file: &PathBuf) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut buf = Zeroizing::new(Vec::new());
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    let read = if file.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_end(&mut buf))
    };
    read.map_err(|e| format!("{}: {e}", file.display()))?;
    if buf.len() > MAX_DOCUMENT_BYTES {
        return Err(format!("{}: larger than {MAX_DOCUMENT_BYTES} bytes", file.display()));
    }
    Ok(buf)
}

/// Creates the Secret or updates the one there, with optimistic concurrency.
async fn write(
    api: &Api<Secret>,
    args: &Args,
    data_key: &str,
    format: Format,
    ciphertext: &str,
) -> Result<&'static str, String> {
    let what = format!("Secret {}/{}", args.namespace, args.name);
    for _ in 0..WRITE_ATTEMPTS {
        let existing =
            api.get_opt(&args.name).await.map_err(|e| format!("reading {what}: {}", super::kube_error(&e)))?;
        let (mut secret, outcome) = match existing {
            Some(s) => {
                check_compatible(&s, &what, args, data_key, format)?;
                (s, "updated")
            }
            None => {
                let mut s = Secret::default();
                s.metadata.name = Some(args.name.clone());
                s.metadata.namespace = Some(args.namespace.clone());
                (s, "created")
            }
        };
        secret.metadata.labels.get_or_insert_with(BTreeMap::new).insert(MANAGED_LABEL.into(), "true".into());
        let annotations = secret.metadata.annotations.get_or_insert_with(BTreeMap::new);
        annotations.insert(TRANSIT_KEY.into(), args.transit_key.clone());
        annotations.insert(FORMAT.into(), format.name().into());
        annotations.insert(BINDING.into(), BINDING_V1.into());
        if let Some(allow) = &args.allow {
            annotations.insert(ALLOWED_SERVICE_ACCOUNTS.into(), allow.join(","));
        }
        secret
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(data_key.into(), ByteString(ciphertext.as_bytes().to_vec()));
        secret.string_data = None;
        let result = if outcome == "created" {
            api.create(&PostParams::default(), &secret).await
        } else {
            api.replace(&args.name, &PostParams::default(), &secret).await
        };
        match result {
            Ok(_) => return Ok(outcome),
            // Someone wrote it meanwhile: read it again and redo the change.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => continue,
            Err(e) => return Err(format!("writing {what}: {}", super::kube_error(&e))),
        }
    }
    Err(format!("writing {what}: it kept changing under us ({WRITE_ATTEMPTS} attempts); try again"))
}

/// Refuses to take over a Secret vaultlet does not manage, or to mix keys or
/// formats within one Secret (the annotations apply to all its data keys).
fn check_compatible(s: &Secret, what: &str, args: &Args, data_key: &str, format: Format) -> Result<(), String> {
    let managed = s.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_LABEL)).is_some_and(|v| v == "true");
    if !managed {
        return Err(format!(
            "{what} exists and is not managed by vaultlet (no label {MANAGED_LABEL}=true); refusing to overwrite it"
        ));
    }
    let others = s.data.as_ref().is_some_and(|d| d.keys().any(|k| k != data_key));
    if !others {
        return Ok(());
    }
    if convention::binding(&s.metadata).map_err(|e| format!("{what}: {e}"))? == Binding::Unbound {
        return Err(format!(
            "{what} holds other data keys sealed before bindings (no {BINDING} annotation); bind them first with \
             `vaultlet recrypt --bind`"
        ));
    }
    if let Some(key) = convention::annotation(&s.metadata, TRANSIT_KEY).filter(|k| *k != args.transit_key) {
        return Err(format!(
            "{what} holds other data keys sealed with transit key {key:?}; seal with --transit-key {key}"
        ));
    }
    let existing = convention::annotation(&s.metadata, FORMAT).unwrap_or("json");
    if existing != format.name() {
        return Err(format!("{what} holds other data keys of format {existing}; one Secret has one format"));
    }
    Ok(())
}
