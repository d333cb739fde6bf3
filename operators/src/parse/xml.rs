//! Small helpers over roxmltree shared by the XML parsers.

use roxmltree::{Document as XmlDocument, Node, ParsingOptions};

use crate::StageError;

/// Parses XML, allowing (but never fetching) a DOCTYPE.
pub(crate) fn parse_xml(text: &str) -> Result<XmlDocument<'_>, StageError> {
    let options = ParsingOptions { allow_dtd: true, ..ParsingOptions::default() };
    XmlDocument::parse_with_options(text, options)
        .map_err(|e| StageError::permanent("bad_xml", format!("XML does not parse: {e}")))
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
    for child in node.children() {
        if child.is_text() {
            out.push_str(child.text().unwrap_or(""));
        } else if child.is_element() && !skip.contains(&child.tag_name().name()) {
            collect_text(child, skip, out);
        }
    }
}
