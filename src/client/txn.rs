//! Builders of Txn and Range requests, in one place: Range and Put
//! operations, ranges sorted oldest first (and newest first, for a lock's
//! wait), deletes, and the create-revision compare.

use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, compare, range_request,
    request_op,
};

/// Every key that starts with `prefix`: the range from it to its successor.
pub(crate) fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let prefix = prefix.as_bytes().to_vec();
    let mut end = prefix.clone();
    *end.last_mut().expect("not empty") += 1;
    (prefix, end)
}

/// A Range request sorted by create revision, oldest first, at most `limit`
/// keys (0: all).
pub(crate) fn oldest_first(limit: i64) -> RangeRequest {
    RangeRequest {
        limit,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// A Range of the keys from `range.0` up to `range.1`, oldest first, at most `limit`.
pub(crate) fn oldest_in(range: (Vec<u8>, Vec<u8>), limit: i64) -> RequestOp {
    let (key, range_end) = range;
    range_op(RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..oldest_first(limit)
    })
}

/// A Range as one operation of a Txn.
pub(crate) fn range_op(range: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(range)),
    }
}

/// A Put as one operation of a Txn.
pub(crate) fn put_op(put: PutRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(put)),
    }
}

/// A Txn compare: `key` was created at revision `rev` (0: does not exist).
pub(crate) fn created_at(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.into(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Default::default(),
    }
}

/// The newest key (by create revision) from `range.0` up to `range.1`
/// created at or before `max_create_rev`: Go's `WithLastCreate()` with
/// `WithMaxCreateRev`, the read behind its `waitDeletes`.
pub(crate) fn newest_created_by(range: (Vec<u8>, Vec<u8>), max_create_rev: i64) -> RangeRequest {
    let (key, range_end) = range;
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        limit: 1,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision: max_create_rev,
        ..Default::default()
    }
}

/// A delete of one key as one operation of a Txn.
pub(crate) fn delete_op(key: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.into(),
                ..Default::default()
            },
        )),
    }
}

/// Runs `txn` nested in a transaction that compares `key`'s create revision
/// with `rev` (a fencing token): the inner response, or `None` when the
/// compare failed (the key is gone or was created again).
pub(crate) async fn fenced(
    client: &crate::client::Client,
    key: Vec<u8>,
    rev: i64,
    txn: crate::proto::etcdserverpb::TxnRequest,
) -> crate::error::Result<Option<crate::proto::etcdserverpb::TxnResponse>> {
    use crate::proto::etcdserverpb::{RequestOp, TxnRequest, request_op, response_op};
    let fenced = TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(txn)),
        }],
        failure: vec![],
    };
    let response = client.kv().txn(fenced).await?.into_inner();
    if !response.succeeded {
        return Ok(None);
    }
    match response
        .responses
        .into_iter()
        .next()
        .and_then(|r| r.response)
    {
        Some(response_op::Response::ResponseTxn(inner)) => Ok(Some(inner)),
        _ => Err(crate::error::Error::UnexpectedResponse {
            what: "a nested Txn answered without its response".into(),
        }),
    }
}
