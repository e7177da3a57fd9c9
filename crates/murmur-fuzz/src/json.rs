//! The `json_changes` target: the body of `POST /docs/{id}/changes`.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ScalarValue, ROOT};
use murmur::json::{apply_ops, document_to_json, operation_count, parse_ops, MAX_CHANGE_OPS};
use serde_json::Value as Json;

/// Parses `data` as a change request and applies its ops to a document
/// with a map, a list, a text and a counter, as the HTTP API does. A
/// refused request must leave the document as it was; an applied one must
/// save and load back to the same content.
pub fn json_changes(data: &[u8]) {
    let Ok(Json::Object(mut request)) = serde_json::from_slice::<Json>(data) else {
        return;
    };
    let Some(ops) = request.remove("ops") else {
        return;
    };
    let Ok(ops) = parse_ops(ops) else {
        return;
    };
    if operation_count(&ops) > MAX_CHANGE_OPS {
        return;
    }
    let mut doc = fixture();
    let before = (doc.get_heads(), document_to_json(&doc));
    let mut tx = doc.transaction();
    match apply_ops(&mut tx, &ops) {
        Ok(()) => {
            tx.commit();
        }
        Err(_) => {
            tx.rollback();
            assert_eq!(
                (doc.get_heads(), document_to_json(&doc)),
                before,
                "a refused request changed the document"
            );
            return;
        }
    }
    let content = document_to_json(&doc);
    let bytes = doc.save();
    let reloaded = automerge::Automerge::load(&bytes).expect("a saved document loads");
    assert_eq!(
        document_to_json(&reloaded),
        content,
        "content changed in a save"
    );
}

fn fixture() -> automerge::Automerge {
    let mut doc = AutoCommit::new().with_actor(automerge::ActorId::from([7u8; 16]));
    let build = |doc: &mut AutoCommit| -> Result<(), automerge::AutomergeError> {
        doc.put(ROOT, "title", "groceries")?;
        let items = doc.put_object(ROOT, "items", ObjType::List)?;
        doc.insert(&items, 0, "milk")?;
        let nested = doc.insert_object(&items, 1, ObjType::Map)?;
        doc.put(&nested, "qty", 2)?;
        let notes = doc.put_object(ROOT, "notes", ObjType::Text)?;
        doc.splice_text(&notes, 0, 0, "buy early")?;
        doc.put(ROOT, "count", ScalarValue::counter(i64::MAX - 1))
    };
    build(&mut doc).expect("the fixture document");
    doc.commit_with(automerge::transaction::CommitOptions::default().with_time(0));
    doc.document().clone()
}
