//! The store's contract: what every caller relies on, whatever engine sits underneath.

use super::*;
use crate::account::User;

fn p(path: &str) -> Vec<String> {
    path.split('/').map(String::from).collect()
}

async fn put(
    store: &Store,
    path: &str,
    content: &[u8],
    owner: &str,
    limit: Option<u64>,
) -> Result<Written, StoreError> {
    let mut w = store.blob_writer(limit)?;
    w.write(content).await?;
    let staged = w.finish().await?;
    store.commit_file(&p(path), staged, owner, limit).await
}

/// Opens a store again in this process. sled finishes with a dropped database on background threads; opening
/// the same folder before they are done can read a stale state (across processes the data lock prevents it).
async fn reopen(dir: &Path) -> Store {
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Store::open(dir).expect("reopen")
}

fn blob_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.flatten().map(|sub| std::fs::read_dir(sub.path()).map(|f| f.count()).unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[tokio::test]
async fn files_are_written_listed_read_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let w = put(&store, "users/lea/Devoirs/exposé.txt", b"bonjour", "lea", None).await.expect("put");
    assert!(w.created);
    assert_eq!(w.entry.size, 7);
    assert_eq!(w.entry.hash.as_deref(), Some(blake3::hash(b"bonjour").to_hex().as_str()));
    let listing = store.list(&p("users/lea/Devoirs")).expect("list");
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].0, "exposé.txt");
    assert!(store.stat(&p("users/lea/Devoirs")).expect("stat").is_some_and(|e| e.dir), "parents are created");
    let again = put(&store, "users/lea/Devoirs/exposé.txt", b"bonsoir!", "lea", None).await.expect("replace");
    assert!(!again.created);
    assert_eq!(store.usage("lea").expect("usage"), 8);
    store.delete(&p("users/lea/Devoirs")).await.expect("delete");
    assert!(store.stat(&p("users/lea/Devoirs/exposé.txt")).expect("stat").is_none());
    assert_eq!(store.usage("lea").expect("usage"), 0);
    assert_eq!(blob_files(dir.path()), 0, "unreferenced blobs are collected");
    assert!(matches!(store.delete(&p("users/lea/nothing")).await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn identical_content_is_stored_once_and_freed_with_its_last_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let content = vec![42u8; 100_000];
    for i in 0..30 {
        put(&store, &format!("classes/CM2/rendus/eleve{i}/devoir.pdf"), &content, &format!("eleve{i}"), None)
            .await
            .expect("put");
    }
    assert_eq!(blob_files(dir.path()), 1);
    assert_eq!(store.usage("eleve3").expect("usage"), 100_000, "each owner is charged the logical size");
    for i in 0..29 {
        store.delete(&p(&format!("classes/CM2/rendus/eleve{i}"))).await.expect("delete");
    }
    assert_eq!(blob_files(dir.path()), 1);
    store.delete(&p("classes/CM2/rendus/eleve29/devoir.pdf")).await.expect("delete");
    assert_eq!(blob_files(dir.path()), 0);
}

#[tokio::test]
async fn quota_refusals_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    put(&store, "users/tom/a", &[1; 600], "tom", Some(1000)).await.expect("first fits");
    let e = put(&store, "users/tom/b", &[2; 600], "tom", Some(1000)).await.expect_err("over quota");
    assert!(matches!(e, StoreError::QuotaExceeded));
    assert!(store.stat(&p("users/tom/b")).expect("stat").is_none());
    assert_eq!(store.usage("tom").expect("usage"), 600);
    assert_eq!(blob_files(dir.path()), 1, "the refused upload's blob is not kept");
    // Replacing one's own file counts only the difference.
    put(&store, "users/tom/a", &[3; 900], "tom", Some(1000)).await.expect("replacement fits");
    // A writer stops as soon as it outgrows its limit.
    let mut w = store.blob_writer(Some(10)).expect("writer");
    assert!(matches!(w.write(&[0; 11]).await, Err(StoreError::QuotaExceeded)));
}

#[tokio::test]
async fn files_and_folders_do_not_overwrite_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    put(&store, "school/menu", b"x", "sec", None).await.expect("put");
    assert!(matches!(put(&store, "school/menu/lundi", b"y", "sec", None).await, Err(StoreError::NotADirectory)));
    store.mkdir(&p("school/docs"), "sec").await.expect("mkdir");
    assert!(matches!(store.mkdir(&p("school/docs"), "sec").await, Err(StoreError::Exists)));
    assert!(matches!(put(&store, "school/docs", b"z", "sec", None).await, Err(StoreError::IsADirectory)));
    // Deleting "school/doc" must not touch its sibling "school/docs".
    put(&store, "school/doc", b"d", "sec", None).await.expect("put");
    store.delete(&p("school/doc")).await.expect("delete");
    assert!(store.stat(&p("school/docs")).expect("stat").is_some());
}

#[tokio::test]
async fn everything_survives_reopening_and_orphans_are_swept() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("open");
        put(&store, "users/lea/a.txt", b"kept", "lea", None).await.expect("put");
        store.flush().await.expect("flush");
    }
    // What a crash between a blob's rename and its metadata commit leaves behind:
    let orphan = blake3::hash(b"orphan").to_hex().to_string();
    std::fs::write(dir.path().join("blobs").join(&orphan[..2]).join(&orphan), b"orphan").expect("orphan");
    std::fs::write(dir.path().join("tmp").join("partial"), b"half an upload").expect("tmp");
    let store = reopen(dir.path()).await;
    let entry = store.stat(&p("users/lea/a.txt")).expect("stat").expect("file kept");
    assert_eq!(entry.size, 4);
    assert_eq!(blob_files(dir.path()), 1, "the orphan blob is swept, the referenced one kept");
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp").count(), 0);
}

#[tokio::test]
async fn a_content_assembled_for_replication_survives_a_restart_until_its_change_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content: Vec<u8> = (0..200_000u32).flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes()).collect();
    let manifest = crate::sync::chunk::Manifest::from_reader(&content[..]).expect("chunking a slice");
    {
        let store = Store::open(dir.path()).expect("open");
        for (chunk, len) in &manifest.chunks {
            let at = manifest.refs().find(|r| r.hash == *chunk).expect("a chunk of the file");
            let bytes = &content[at.offset as usize..][..*len as usize];
            store.chunk_stage().put(chunk, bytes).expect("stage");
        }
        store.assemble(&manifest).await.expect("assemble");
        store.flush().await.expect("flush");
    }
    // A crash before the change naming it arrived: no file points to it, yet it is kept, with its index.
    let store = reopen(dir.path()).await;
    assert!(store.has_blob(manifest.file), "the assembled content was swept at restart");
    assert_eq!(store.manifest(manifest.file).await.expect("manifest"), Some(manifest));
}

#[test]
fn a_second_process_cannot_take_the_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = DataLock::acquire(dir.path()).expect("first lock");
    // flock locks belong to the open file description: a second open in this process conflicts like
    // another process would.
    match DataLock::acquire(dir.path()) {
        Err(LockError::Busy { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("expected Busy, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_import_cut_by_a_crash_is_finished_or_forgotten_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let user = |login: &str| User { login: login.into(), display_name: login.into(), ..User::default() };
    {
        let store = Store::open(dir.path()).expect("open");
        // Crash after the staging tree was marked ready, before the copy.
        store.users_staging.insert("ready.one", encode(&user("ready.one"))).expect("stage");
        store.users_staging.insert(READY_MARK, &[]).expect("mark");
        store.flush().await.expect("flush");
    }
    {
        let store = reopen(dir.path()).await;
        assert!(store.user("ready.one").expect("user").is_some(), "a ready import is finished at start");
        assert!(store.users_staging.is_empty());
        // Crash while staging, before the mark.
        store.users_staging.insert("half.done", encode(&user("half.done"))).expect("stage");
        store.flush().await.expect("flush");
    }
    let store = reopen(dir.path()).await;
    assert!(store.user("half.done").expect("user").is_none(), "an unfinished import is forgotten");
    assert!(store.users_staging.is_empty());
}

#[tokio::test]
async fn directory_imports_can_be_undone_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    let user = |login: &str, name: &str| User { login: login.into(), display_name: name.into(), ..User::default() };
    store.create_user(&user("a", "A")).await.expect("create");
    let changes: Vec<User> = (0..2500).map(|i| user(&format!("u{i}"), "x")).chain([user("a", "A2")]).collect();
    store.apply_directory(&changes).await.expect("apply");
    assert_eq!(store.user_count(), 2501);
    assert_eq!(store.user("a").expect("a").map(|u| u.display_name), Some("A2".into()));
    assert_eq!(store.undo_directory().await.expect("undo"), 1);
    assert_eq!(store.user_count(), 1);
    assert_eq!(store.user("a").expect("a").map(|u| u.display_name), Some("A".into()));
    assert!(matches!(store.undo_directory().await, Err(StoreError::NotFound)));
}

#[tokio::test]
async fn a_snapshot_keeps_contents_deleted_after_it_until_it_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    put(&store, "users/lea/a.txt", b"garde pour la sauvegarde", "lea", None).await.expect("put");
    put(&store, "users/lea/b.txt", b"autre", "lea", None).await.expect("put");
    let snapshot = store.snapshot().await.expect("snapshot");
    assert_eq!(snapshot.entry_count, 4, "two folders and two files");
    assert_eq!(snapshot.blobs.len(), 2);
    store.delete(&p("users/lea/a.txt")).await.expect("delete");
    // Uploads go on during the snapshot, and are not in it.
    put(&store, "users/lea/c.txt", b"nouveau", "lea", None).await.expect("put");
    assert_eq!(blob_files(dir.path()), 3, "the deleted content stays while the snapshot may still copy it");
    for (_, size, path) in &snapshot.blobs {
        assert_eq!(std::fs::metadata(path).expect("pinned blob").len(), *size);
    }
    drop(snapshot);
    store.collect_deferred().await.expect("collect");
    assert_eq!(blob_files(dir.path()), 2, "freed once the snapshot is over");
}

#[tokio::test]
async fn a_snapshot_loads_into_an_empty_store_with_usage_and_references_recomputed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store.create_user(&User { login: "lea".into(), ..User::default() }).await.expect("user");
    put(&store, "users/lea/a.txt", b"pareil", "lea", None).await.expect("put");
    put(&store, "users/lea/b.txt", b"pareil", "lea", None).await.expect("put");
    put(&store, "classes/CM2/c.txt", b"autre", "paul", None).await.expect("put");
    let snapshot = store.snapshot().await.expect("snapshot");
    let other = tempfile::tempdir().expect("tempdir");
    let copy = Store::open(other.path()).expect("open");
    let open = |p: &Path| std::io::BufReader::new(std::fs::File::open(p).expect("dump"));
    let loaded = copy.load(open(&snapshot.users), open(&snapshot.entries)).expect("load");
    assert_eq!((loaded.users, loaded.entries, loaded.blobs.len()), (1, 7, 2));
    assert_eq!(copy.usage("lea").expect("usage"), 12);
    assert_eq!(copy.usage("paul").expect("usage"), 5);
    assert_eq!(copy.list(&p("users/lea")).expect("list").len(), 2);
    assert!(copy.user("lea").expect("user").is_some());
    assert_ne!(copy.replica_id().expect("id"), store.replica_id().expect("id"));
    // Everything a restored store holds is its own change, to be offered to the region as such.
    let offered = copy.changes_since("", &[], &std::collections::BTreeMap::new(), 100).expect("changes");
    assert_eq!(offered.len(), 8, "one account and seven entries");
    assert!(offered.iter().all(|c| c.version.writer == copy.replica_id().expect("id")));
    // A store that holds data already is never loaded into.
    let again = copy.load(open(&snapshot.users), open(&snapshot.entries));
    assert!(matches!(again, Err(StoreError::Exists)));
}

// ---- replication between two stores ----

mod replication {
    use super::*;
    use crate::store::sync::{Change, Sides};

    const UAI: &str = "0123456A";

    /// A box store and a region store, with the region's root for the school.
    struct Pair {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        boxed: Store,
        region: Store,
    }

    fn root() -> Vec<String> {
        vec!["schools".into(), UAI.into()]
    }

    impl Pair {
        fn new() -> Pair {
            let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
            let boxed = Store::open(a.path()).expect("open");
            let region = Store::open(b.path()).expect("open");
            Pair { _dirs: (a, b), boxed, region }
        }

        fn sides(&self) -> Sides {
            Sides { region: self.region.me().to_owned() }
        }

        /// Copies the contents `changes` need from one store to the other, as the transfer layer will.
        async fn carry(from: &Store, to: &Store, changes: &[Change]) {
            for change in changes {
                if let Some((hash, _)) = change.record.content() {
                    if !to.has_blob(hash) {
                        let bytes = std::fs::read(from.blob_path(hash)).expect("blob");
                        let mut w = to.blob_writer(None).expect("writer");
                        w.write(&bytes).await.expect("write");
                        to.install_blob(w.finish().await.expect("finish")).await.expect("install");
                    }
                }
            }
        }

        /// One session as the box runs it: push what the region lacks, then pull what the box lacks.
        async fn sync(&self) -> (usize, usize) {
            let sides = self.sides();
            let seen = self.region.high_water(UAI).expect("hwm");
            let up = self.boxed.changes_since("", &[], &seen, 10_000).expect("changes");
            Self::carry(&self.boxed, &self.region, &up).await;
            self.region.apply_remote(UAI, &root(), &up, &sides).await.expect("apply up");
            let seen = self.boxed.high_water("").expect("hwm");
            let down = self.region.changes_since(UAI, &root(), &seen, 10_000).expect("changes");
            Self::carry(&self.region, &self.boxed, &down).await;
            self.boxed.apply_remote("", &[], &down, &sides).await.expect("apply down");
            (up.len(), down.len())
        }

        /// Syncs until nothing moves (a resolution travels back once).
        async fn converge(&self) {
            for _ in 0..4 {
                if self.sync().await == (0, 0) {
                    return;
                }
            }
            panic!("no convergence after 4 sessions");
        }

        fn files(store: &Store, root: &[String]) -> Vec<(String, Option<String>)> {
            let mut out = Vec::new();
            for kv in store.entries.iter() {
                let (k, v) = kv.expect("entry");
                let entry: Entry = decode(&k, &v).expect("decode");
                let path = String::from_utf8_lossy(&k).replace('\0', "/");
                let prefix = root.join("/");
                let rel = path.strip_prefix(&prefix).map(|r| r.trim_start_matches('/').to_string());
                if let Some(rel) = rel.filter(|r| !r.is_empty()) {
                    out.push((rel, entry.hash));
                }
            }
            out.sort();
            out
        }

        fn assert_same(&self) -> Vec<(String, Option<String>)> {
            let b = Self::files(&self.boxed, &[]);
            let r = Self::files(&self.region, &root());
            assert_eq!(b, r, "box and region differ");
            b
        }
    }

    fn names(files: &[(String, Option<String>)]) -> Vec<&str> {
        files.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[tokio::test]
    async fn files_and_deletions_flow_both_ways_and_replays_change_nothing() {
        let pair = Pair::new();
        put(&pair.boxed, "users/lea/devoir.odt", b"v1", "lea", None).await.expect("put");
        put(&pair.region, &format!("schools/{UAI}/school/ressources/carte.pdf"), b"carte", "admin", None)
            .await
            .expect("put");
        pair.converge().await;
        let files = pair.assert_same();
        assert!(
            names(&files).contains(&"users/lea/devoir.odt") && names(&files).contains(&"school/ressources/carte.pdf")
        );

        // A batch delivered twice (an acknowledgement lost) changes nothing the second time.
        let up = pair.region.changes_since(UAI, &root(), &std::collections::BTreeMap::new(), 100).expect("changes");
        let again = pair.boxed.apply_remote("", &[], &up, &pair.sides()).await.expect("apply");
        assert_eq!((again.applied, again.conflicts), (0, 0), "{again:?}");

        pair.boxed.delete(&p("users/lea/devoir.odt")).await.expect("delete");
        pair.converge().await;
        let files = pair.assert_same();
        assert!(!names(&files).contains(&"users/lea/devoir.odt"));
        assert!(!pair.region.has_blob(Hash(*blake3::hash(b"v1").as_bytes())), "the deletion freed the space there too");
    }

    #[tokio::test]
    async fn concurrent_edits_keep_both_versions_on_both_sides() {
        let pair = Pair::new();
        put(&pair.boxed, "classes/CM2/cours.odt", b"commun", "paul", None).await.expect("put");
        pair.converge().await;
        put(&pair.boxed, "classes/CM2/cours.odt", b"version de l'ecole", "paul", None).await.expect("put");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        put(&pair.region, &format!("schools/{UAI}/classes/CM2/cours.odt"), b"version de la maison", "paul", None)
            .await
            .expect("put");
        pair.converge().await;
        let files = pair.assert_same();
        let hash = |b: &[u8]| Some(blake3::hash(b).to_hex().to_string());
        let original = files.iter().find(|(p, _)| p == "classes/CM2/cours.odt").expect("kept");
        assert_eq!(original.1, hash(b"version de l'ecole"), "the earlier edit keeps the name");
        let copy = files.iter().find(|(p, _)| p.contains("(conflit ")).expect("a conflict copy");
        assert!(copy.0.ends_with(" region).odt"), "named for the side of the later edit: {}", copy.0);
        assert_eq!(copy.1, hash(b"version de la maison"));
        assert_eq!(files.len(), 4, "two folders, the file and its copy: {files:?}");
    }

    #[tokio::test]
    async fn an_edit_wins_over_a_deletion_and_a_folder_with_new_content_survives() {
        let pair = Pair::new();
        put(&pair.boxed, "users/lea/a.txt", b"a", "lea", None).await.expect("put");
        put(&pair.boxed, "classes/CM2/vieux.txt", b"vieux", "paul", None).await.expect("put");
        pair.converge().await;
        pair.region.delete(&p(&format!("schools/{UAI}/users/lea/a.txt"))).await.expect("delete");
        put(&pair.boxed, "users/lea/a.txt", b"a modifie", "lea", None).await.expect("put");
        pair.region.delete(&p(&format!("schools/{UAI}/classes/CM2"))).await.expect("delete");
        put(&pair.boxed, "classes/CM2/nouveau.txt", b"nouveau", "paul", None).await.expect("put");
        pair.converge().await;
        let files = pair.assert_same();
        let names = names(&files);
        assert!(names.contains(&"users/lea/a.txt"), "the edit won: {names:?}");
        assert!(names.contains(&"classes/CM2/nouveau.txt") && names.contains(&"classes/CM2"), "{names:?}");
        assert!(!names.contains(&"classes/CM2/vieux.txt"), "what the deletion knew is gone: {names:?}");
    }

    #[tokio::test]
    async fn accounts_take_the_regions_directory_and_the_latest_password() {
        let pair = Pair::new();
        let mut lea = User {
            login: "lea.martin".into(),
            display_name: "Léa".into(),
            classes: vec!["CM1".into()],
            ..User::default()
        };
        lea.school = Some(UAI.into());
        pair.region.create_user(&lea).await.expect("create");
        pair.converge().await;
        let on_box = pair.boxed.user("lea.martin").expect("user").expect("flowed down");
        assert_eq!(on_box.school, None, "a box's people carry no school");
        // Concurrently: the region moves her to CM2, she changes her password at school.
        lea.classes = vec!["CM2".into()];
        pair.region.put_user(&lea).await.expect("put");
        let mut changed = on_box.clone();
        changed.password_hash = "nouveau-hash".into();
        changed.password_changed = now_ms();
        pair.boxed.put_user(&changed).await.expect("put");
        pair.converge().await;
        for store in [&pair.boxed, &pair.region] {
            let u = store.user("lea.martin").expect("user").expect("there");
            assert_eq!(u.classes, vec!["CM2".to_string()], "the region's directory");
            assert_eq!(u.password_hash, "nouveau-hash", "the latest password");
        }
        assert!(pair.region.user("admin").expect("user").is_none(), "admins never travel");
    }
}

#[tokio::test]
async fn moves_and_copies_keep_content_quota_and_properties() {
    use super::props::{DeadProp, PropChange};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    put(&store, "users/lea/a/un.txt", b"un", "lea", None).await.expect("put");
    put(&store, "users/lea/a/b/deux.txt", b"deux", "lea", None).await.expect("put");
    let tag = DeadProp { namespace: "urn:x".into(), name: "tag".into(), prefix: None, xml: Some("<tag/>".into()) };
    store.patch_props(&p("users/lea/a/b/deux.txt"), &[PropChange::Set(tag.clone())]).await.expect("props");
    // A move takes the folder with everything below it, properties included; owners and usage stay.
    store.rename(&p("users/lea/a"), &p("users/lea/c/d")).await.expect("rename");
    assert!(store.stat(&p("users/lea/a")).expect("stat").is_none());
    assert!(store.stat(&p("users/lea/a/b/deux.txt")).expect("stat").is_none());
    assert_eq!(store.stat(&p("users/lea/c/d/b/deux.txt")).expect("stat").map(|e| e.size), Some(4));
    assert_eq!(store.props(&p("users/lea/c/d/b/deux.txt")).expect("props"), vec![tag.clone()]);
    assert!(store.props(&p("users/lea/a/b/deux.txt")).expect("props").is_empty());
    assert_eq!(store.usage("lea").expect("usage"), 6);
    assert!(matches!(store.rename(&p("users/lea/c"), &p("users/lea/c/d/e")).await, Err(StoreError::NotADirectory)));
    assert!(matches!(store.rename(&p("users/lea/c/d/un.txt"), &p("users/lea/c/d")).await, Err(StoreError::Exists)));
    // A copy is charged to its owner, within their limit, and shares the content.
    assert!(matches!(
        store.copy_file(&p("users/lea/c/d/b/deux.txt"), &p("users/tom/deux.txt"), "tom", Some(3)).await,
        Err(StoreError::QuotaExceeded)
    ));
    store.copy_file(&p("users/lea/c/d/b/deux.txt"), &p("users/tom/deux.txt"), "tom", None).await.expect("copy");
    assert_eq!(store.usage("tom").expect("usage"), 4);
    assert_eq!(store.props(&p("users/tom/deux.txt")).expect("props"), vec![tag]);
    store.delete(&p("users/lea/c")).await.expect("delete");
    assert_eq!(blob_files(dir.path()), 1, "the copy still holds the content");
    assert!(store.props(&p("users/lea/c/d/b/deux.txt")).expect("props").is_empty(), "deleted with its file");
    // Everything above survives a restart.
    drop(store);
    let store = reopen(dir.path()).await;
    assert_eq!(store.stat(&p("users/tom/deux.txt")).expect("stat").map(|e| e.size), Some(4));
}
