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
    // A store that holds data already is never loaded into.
    let again = copy.load(open(&snapshot.users), open(&snapshot.entries));
    assert!(matches!(again, Err(StoreError::Exists)));
}
