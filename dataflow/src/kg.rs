//! The knowledge graph as a differential computation: every document's
//! latest claim set, and what follows from all of them (each edge's support,
//! each concept's mentions), kept consistent through upserts and deletes.
//!
//! Each epoch, a document contributes its whole claim set as a new version
//! (a tombstone contributes none). An upsert arrangement keyed by
//! `(tenant, document)` keeps the latest version only, so a new version
//! retracts the old claims and a deletion retracts all of them. From that
//! collection, `distinct` and `count` maintain, per tenant, the number of
//! distinct documents that support each edge and that mention each concept.
//! Only the net changes of an epoch leave the computation.

use differential_dataflow::operators::arrange::upsert::arrange_from_upsert;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use timely::dataflow::Stream;

pub use medkg_operators::graph::{DocClaims, DocKey, Edge};

/// An upsert: a document's new claims at an epoch, or `None` to delete it.
pub type Upsert = (DocKey, Option<DocClaims>, u64);

/// What the graph maintains from the documents' latest versions.
pub struct GraphViews<'s> {
    /// `((tenant, edge), support)`: distinct documents stating each edge.
    pub support: VecCollection<'s, u64, ((String, Edge), isize), isize>,
    /// `((tenant, concept), documents)`: distinct documents mentioning each concept.
    pub mentions: VecCollection<'s, u64, ((String, String), isize), isize>,
    /// `((tenant, document), claims)`: each document's latest claim set.
    pub documents: VecCollection<'s, u64, (DocKey, DocClaims), isize>,
}

/// Builds the graph over a stream of upserts. Upserts of one document at
/// one time must be one (the last by source position): the caller keeps
/// only that one.
pub fn graph<'s>(upserts: Stream<'s, u64, Vec<Upsert>>) -> GraphViews<'s> {
    let latest = arrange_from_upsert::<
        ValBuilder<DocKey, DocClaims, u64, isize>,
        ValSpine<DocKey, DocClaims, u64, isize>,
        DocKey,
        DocClaims,
    >(upserts, "kg: latest version");
    let documents = latest.as_collection(|k, v| (k.clone(), v.clone()));
    let support = per_tenant_by_documents(documents.clone(), |claims| claims.edges);
    let mentions = per_tenant_by_documents(documents.clone(), |claims| claims.mentions);
    GraphViews { support, mentions, documents }
}

/// For each `(tenant, item)` that `items` finds in the documents, how many
/// distinct documents hold it.
fn per_tenant_by_documents<'s, I: differential_dataflow::ExchangeData + std::hash::Hash>(
    documents: VecCollection<'s, u64, (DocKey, DocClaims), isize>,
    items: fn(DocClaims) -> Vec<I>,
) -> VecCollection<'s, u64, ((String, I), isize), isize> {
    documents
        .flat_map(move |((tenant, doc), claims)| {
            items(claims).into_iter().map(move |item| ((tenant.clone(), item), doc.clone()))
        })
        .distinct()
        .map(|(tenant_item, _doc)| tenant_item)
        .count()
}
