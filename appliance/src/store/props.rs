//! Dead properties: what WebDAV clients store on files and folders with PROPPATCH (Windows keeps its
//! timestamps there, macOS its tags), kept by tree key in their own sled tree.
//!
//! They are box-local metadata: they follow their record through MOVE, COPY and DELETE here, but do not
//! replicate and are not in backups (file managers rewrite them; losing them loses no work).

use serde::{Deserialize, Serialize};

use super::{decode, encode, entry_key, Store, StoreError};

/// Most properties on one file, and most bytes of them: a client cannot grow the metadata database unbounded.
pub const MAX_PROPS: usize = 64;
pub const MAX_PROP_BYTES: usize = 64 << 10;

/// One property: its qualified name and its value as the XML the client sent (`None`: empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadProp {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xml: Option<String>,
}

/// What a PROPPATCH asks, in its order: set a property, or remove one (by namespace and name).
#[derive(Debug, Clone)]
pub enum PropChange {
    Set(DeadProp),
    Remove { namespace: String, name: String },
}

impl Store {
    /// The dead properties of `path`.
    pub fn props(&self, path: &[String]) -> Result<Vec<DeadProp>, StoreError> {
        let key = entry_key(path);
        match self.props.get(&key)? {
            None => Ok(Vec::new()),
            Some(v) => decode(&key, &v),
        }
    }

    /// Applies `changes` to `path`'s properties all together. `QuotaExceeded` (nothing changed) past
    /// `MAX_PROPS`/`MAX_PROP_BYTES`; `NotFound` when the record does not exist. Durable when it returns.
    pub async fn patch_props(&self, path: &[String], changes: &[PropChange]) -> Result<(), StoreError> {
        let _guard = self.mutate.lock().await;
        if !path.is_empty() && self.stat(path)?.is_none() {
            return Err(StoreError::NotFound);
        }
        let mut props = self.props(path)?;
        for change in changes {
            match change {
                PropChange::Set(p) => {
                    props.retain(|q| !(q.namespace == p.namespace && q.name == p.name));
                    props.push(p.clone());
                }
                PropChange::Remove { namespace, name } => {
                    props.retain(|q| !(&q.namespace == namespace && &q.name == name));
                }
            }
        }
        let key = entry_key(path);
        if props.is_empty() {
            self.props.remove(&key)?;
        } else {
            let bytes = encode(&props);
            if props.len() > MAX_PROPS || bytes.len() > MAX_PROP_BYTES {
                return Err(StoreError::QuotaExceeded);
            }
            self.props.insert(&key, bytes)?;
        }
        self.flush().await
    }
}
