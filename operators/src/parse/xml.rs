//! Small helpers over roxmltree shared by the XML parsers, and the rules
//! that keep hostile XML from costing more than its own bytes.
//!
//! - **No DTD processing.** A DOCTYPE that only names an external DTD
//!   (PubMed, JATS and TEI files carry one) is allowed and never fetched;
//!   a DOCTYPE with an internal subset (`[...]`) or any `<!ENTITY` is
//!   refused (`dtd_refused`), so no entity can expand ("billion laughs").
//!   Without entities, the text of a tree is never longer than its input.
//! - **Bounded trees.** At most [`MAX_NODES`] nodes and [`MAX_DEPTH`]
//!   levels of nesting (`too_deep`); every walk over a tree here is
//!   iterative, so no input can overflow a worker's stack.

use roxmltree::{Document as XmlDocument, Node, ParsingOptions};

use crate::StageError;

/// The deepest element nesting accepted (real JATS nests a few dozen levels).
pub const MAX_DEPTH: usize = 256;

/// The most nodes (elements, text, comments) one XML document may have.
pub const MAX_NODES: u32 = 1_000_000;

/// Parses XML: an external DOCTYPE is allowed (and never fetched), DTD
/// processing is not; the tree is bounded in size and depth.
pub(crate) fn parse_xml(text: &str) -> Result<XmlDocument<'_>, StageError> {
    refuse_dtd(text)?;
    let options = ParsingOptions { allow_dtd: true, nodes_limit: MAX_NODES, ..ParsingOptions::default() };
    let xml = XmlDocument::parse_with_options(text, options).map_err(|e| match e {
        roxmltree::Error::NodesLimitReached => {
            StageError::permanent("too_large", format!("XML has more than {MAX_NODES} nodes"))
        }
        e => StageError::permanent("bad_xml", format!("XML does not parse: {e}")),
    })?;
    let depth = max_depth(&xml);
    if depth > MAX_DEPTH {
        return Err(StageError::permanent(
            "too_deep",
            format!("XML nests elements {depth} deep; the limit is {MAX_DEPTH}"),
        ));
    }
    Ok(xml)
}

/// Refuses internal DTD subsets and entity declarations, before any parsing.
pub(crate) fn refuse_dtd(text: &str) -> Result<(), StageError> {
    let refused = |why: &str| StageError::permanent("dtd_refused", format!("XML {why}: DTD processing is refused"));
    if text.contains("<!ENTITY") {
        return Err(refused("declares an entity"));
    }
    let Some(at) = text.find("<!DOCTYPE") else { return Ok(()) };
    // Up to the declaration's end, quoted literals skipped: a `[` opens an internal subset.
    let mut quote = None;
    for c in text[at..].chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => return Err(refused("has an internal DTD subset")),
            (None, '>') => return Ok(()),
            _ => {}
        }
    }
    Err(refused("has an unterminated DOCTYPE"))
}

/// The deepest element nesting of a document, in one pass over its
/// elements in document order, keeping only the path to the current one.
fn max_depth(xml: &XmlDocument<'_>) -> usize {
    let mut path: Vec<roxmltree::NodeId> = Vec::new();
    let mut deepest = 0;
    for element in xml.root().descendants().filter(|n| n.is_element()) {
        // Its parent element is on the path (document order): leave what is below it.
        let parent = element.parent_element().map(|p| p.id());
        while path.last().is_some_and(|&top| Some(top) != parent) {
            path.pop();
        }
        path.push(element.id());
        deepest = deepest.max(path.len());
    }
    deepest
}

/// The root element, which must be called `name` (`what` describes it).
pub(crate) fn root<'a, 'i>(xml: &'a XmlDocument<'i>, name: &str, what: &str) -> Result<Node<'a, 'i>, StageError> {
    let root = xml.root_element();
    if root.tag_name().name() == name {
        Ok(root)
    } else {
        Err(StageError::permanent(
            "bad_record",
            format!("root element is <{}>, expected {what}", root.tag_name().name()),
        ))
    }
}

/// The name of the root element, read without parsing the whole document.
pub(crate) fn root_name(text: &str) -> Option<&str> {
    let mut rest = text;
    loop {
        let start = rest.find('<')?;
        rest = &rest[start + 1..];
        if rest.starts_with('?') || rest.starts_with('!') {
            // Declarations, comments and the DOCTYPE: skip to their end.
            let end = if rest.starts_with("!--") { rest.find("-->")? + 3 } else { rest.find('>')? + 1 };
            rest = &rest[end..];
            continue;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
        let name = &rest[..end];
        // Drop a namespace prefix (`tei:TEI`).
        return Some(name.rsplit(':').next().unwrap_or(name));
    }
}

/// The first child element called `name`.
pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// All child elements called `name`.
pub(crate) fn children<'a, 'i: 'a>(node: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children().filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// Follows a path of child element names.
pub(crate) fn path<'a, 'i>(node: Node<'a, 'i>, names: &[&str]) -> Option<Node<'a, 'i>> {
    names.iter().try_fold(node, |n, name| child(n, name))
}

/// The first descendant element called `name` (the node itself included).
pub(crate) fn descendant<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.descendants().find(|n| n.is_element() && n.tag_name().name() == name)
}

/// All text under `node`, whitespace-normalised, skipping the subtrees of
/// elements named in `skip` (tables, formulas, nested sections...).
pub(crate) fn text_of(node: Node<'_, '_>, skip: &[&str]) -> String {
    let mut raw = String::new();
    collect_text(node, skip, &mut raw);
    super::normalize(&raw)
}

fn collect_text(node: Node<'_, '_>, skip: &[&str], out: &mut String) {
    // Iterative (an explicit stack of children, in reverse): depth costs heap, not stack.
    let mut stack: Vec<Node<'_, '_>> = node.children().collect();
    stack.reverse();
    while let Some(child) = stack.pop() {
        if child.is_text() {
            out.push_str(child.text().unwrap_or(""));
        } else if child.is_element() && !skip.contains(&child.tag_name().name()) {
            let at = stack.len();
            stack.extend(child.children());
            stack[at..].reverse();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtds_are_refused_unless_external_only() {
        let external = "<!DOCTYPE PubmedArticleSet PUBLIC \"-//NLM//DTD PubMedArticle//EN\" \"https://dtd.nlm.nih.gov/x[1].dtd\">\n<a>x</a>";
        assert!(parse_xml(external).is_ok());
        for bad in [
            "<!DOCTYPE a [<!ELEMENT a ANY>]><a/>",
            "<!DOCTYPE a [<!ENTITY x \"xx\">]><a>&x;</a>",
            "<a><!ENTITY x \"y\"></a>",
            "<!DOCTYPE a SYSTEM \"a.dtd\"",
        ] {
            assert_eq!(parse_xml(bad).unwrap_err().kind, "dtd_refused", "{bad}");
        }
    }

    #[test]
    fn depth_is_bounded_and_walks_are_iterative() {
        let nest = |n: usize| format!("{}x{}", "<i>".repeat(n), "</i>".repeat(n));
        let ok = nest(MAX_DEPTH);
        let xml = parse_xml(&ok).unwrap();
        assert_eq!(text_of(xml.root_element(), &[]), "x");
        assert_eq!(parse_xml(&nest(MAX_DEPTH + 1)).unwrap_err().kind, "too_deep");
        assert_eq!(parse_xml(&nest(50_000)).unwrap_err().kind, "too_deep");
    }

    #[test]
    fn text_keeps_document_order_and_skips() {
        let xml = parse_xml("<p>a <b>b <i>c</i></b> <t>skip</t> d<i>e</i></p>").unwrap();
        assert_eq!(text_of(xml.root_element(), &["t"]), "a b c de");
    }
}
