//! SOPS: which files are encrypted, and decrypting them with the real `sops` and the age keys of
//! `spec.decryption.secretRef`. The keys go to sops in its environment only; the plaintext comes
//! back on its standard output, in memory, and is written nowhere but the render's private folder.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::RenderError;
use super::exec::{self, ExecFailure, Invocation};

/// A file format sops encrypts and Tether decrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Dotenv,
    Ini,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Yaml => "yaml",
            Format::Json => "json",
            Format::Dotenv => "dotenv",
            Format::Ini => "ini",
        }
    }
}

/// Whether a file named `path` can be one sops encrypted (by its extension), before reading it.
pub fn may_be_encrypted(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    [".yaml", ".yml", ".json", ".env", ".ini"]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// The format of `path` when its content is SOPS-encrypted (it carries sops's metadata and
/// message authentication code), else `None`.
pub fn encrypted_format(path: &str, content: &[u8]) -> Option<Format> {
    let lower = path.to_ascii_lowercase();
    let text = std::str::from_utf8(content).ok()?;
    let has_line = |prefix: &str| text.lines().any(|l| l.starts_with(prefix));
    if lower.ends_with(".yaml") || lower.ends_with(".yml") {
        (has_line("sops:") && text.contains("mac: ENC[")).then_some(Format::Yaml)
    } else if lower.ends_with(".json") {
        (text.contains("\"sops\"") && text.contains("\"mac\": \"ENC[")).then_some(Format::Json)
    } else if lower.ends_with(".env") {
        has_line("sops_mac=ENC[").then_some(Format::Dotenv)
    } else if lower.ends_with(".ini") {
        (has_line("[sops]") && text.contains("mac = ENC[")).then_some(Format::Ini)
    } else {
        None
    }
}

/// The age keys of a Secret's `*.agekey` entries, one per line, as `SOPS_AGE_KEY` takes them.
pub fn age_keys(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<String, RenderError> {
    let keys: Vec<String> = data
        .iter()
        .filter(|(name, _)| name.ends_with(".agekey"))
        .map(|(_, value)| String::from_utf8_lossy(value).trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if keys.is_empty() {
        return Err(RenderError::NoKeys {
            secret: secret.to_owned(),
        });
    }
    Ok(keys.join("\n"))
}

/// What decrypting needs: the tool, the keys and where it may keep its home.
#[derive(Debug)]
pub struct Decryptor<'a> {
    /// The sops executable.
    pub sops: &'a Path,
    /// The Secret the keys came from, `namespace/name`, for messages.
    pub secret: &'a str,
    /// `SOPS_AGE_KEY`.
    pub keys: &'a str,
    /// The render's private folder.
    pub scratch: &'a Path,
    /// How long one file may take.
    pub timeout: Duration,
}

impl Decryptor<'_> {
    /// The plaintext of `content` (the file `path`, of `format`).
    pub async fn decrypt(
        &self,
        path: &str,
        format: Format,
        content: Vec<u8>,
        max_output: u64,
    ) -> Result<Vec<u8>, RenderError> {
        let home = self.scratch.join("home");
        let args = vec![
            "decrypt".into(),
            "--input-type".into(),
            format.as_str().into(),
            "--output-type".into(),
            format.as_str().into(),
            "--filename-override".into(),
            path.into(),
        ];
        let run = exec::run(Invocation {
            program: self.sops,
            args,
            dir: self.scratch,
            home: &home,
            env: vec![("SOPS_AGE_KEY", self.keys.into())],
            stdin: Some(content),
            timeout: self.timeout,
            max_stdout: max_output,
            network: false,
        })
        .await;
        run.map_err(|failure| RenderError::Decrypt {
            file: path.to_owned(),
            secret: self.secret.to_owned(),
            message: match failure {
                ExecFailure::Exit { stderr, .. } => {
                    exec::clean(&stderr, self.scratch, super::MAX_MESSAGE)
                }
                other => other.to_string(),
            },
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_files_are_told_from_plain_ones() {
        let yaml = "apiVersion: v1\nkind: Secret\ndata:\n  password: ENC[AES256_GCM,data:x]\nsops:\n  age: []\n  mac: ENC[AES256_GCM,data:y]\n";
        assert_eq!(
            encrypted_format("a/secret.enc.yaml", yaml.as_bytes()),
            Some(Format::Yaml)
        );
        assert_eq!(encrypted_format("a/secret.txt", yaml.as_bytes()), None);
        let plain = "apiVersion: v1\nkind: ConfigMap\ndata:\n  sops: \"mac: ENC[ in a value\"\n";
        assert_eq!(encrypted_format("cm.yaml", plain.as_bytes()), None);
        let env = "PASSWORD=ENC[AES256_GCM,data:x]\nsops_version=3.13.3\nsops_mac=ENC[AES256_GCM,data:z]\n";
        assert_eq!(
            encrypted_format("app/.env", env.as_bytes()),
            Some(Format::Dotenv)
        );
        assert_eq!(encrypted_format("app/plain.env", b"A=1\n"), None);
        let json = "{\"data\": \"ENC[...]\", \"sops\": {\"mac\": \"ENC[AES256_GCM,data:q]\"}}";
        assert_eq!(
            encrypted_format("s.json", json.as_bytes()),
            Some(Format::Json)
        );
    }

    #[test]
    fn keys_come_from_agekey_entries_only() {
        let data = BTreeMap::from([
            (
                "identity.agekey".to_owned(),
                b"AGE-SECRET-KEY-1AAA\n".to_vec(),
            ),
            ("old.agekey".to_owned(), b"AGE-SECRET-KEY-1BBB".to_vec()),
            ("README".to_owned(), b"not a key".to_vec()),
        ]);
        assert_eq!(
            age_keys("ns/keys", &data).unwrap(),
            "AGE-SECRET-KEY-1AAA\nAGE-SECRET-KEY-1BBB"
        );
        let err = age_keys("ns/keys", &BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("ns/keys"), "{err}");
    }
}
