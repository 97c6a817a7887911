//! The lineage graph: connectors → flows → connectors, and flow → flow
//! through bridges. `layout-rs` places the boxes and routes the edges
//! (layered, left to right); the SVG is drawn here from its positions, so
//! that every node and edge carries what a reader (or a test) needs to
//! find it: `class`, `data-node`, `data-from`, `data-to`, a link.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use layout::core::base::Orientation;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::Point;
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;
use weavster_project::Project;

/// What a box stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeKind {
    Connector,
    Flow,
}

impl NodeKind {
    pub fn class(self) -> &'static str {
        match self {
            NodeKind::Connector => "connector",
            NodeKind::Flow => "flow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// The flow's name or the connector's `file.key`.
    pub name: String,
    /// A second line: the connector's type, or `flow`.
    pub detail: String,
}

impl Node {
    /// `flow:<name>` or `connector:<file.key>`: unique in a graph.
    pub fn id(&self) -> String {
        format!("{}:{}", self.kind.class(), self.name)
    }

    /// The node's page, relative to the site's root.
    pub fn href(&self) -> String {
        match self.kind {
            NodeKind::Connector => format!("connectors/{}.html", self.name),
            NodeKind::Flow => format!("flows/{}.html", self.name),
        }
    }
}

/// A link between two nodes (indices into [`Graph::nodes`]); one per pair,
/// however many outputs make it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    /// `bridge` for flow → flow.
    pub bridge: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// The project's graph: every connector (used or not) and every flow.
pub fn graph(project: &Project) -> Graph {
    let mut g = Graph::default();
    for c in project.connectors.values() {
        g.nodes.push(Node {
            kind: NodeKind::Connector,
            name: c.reference.clone(),
            detail: c.connector.type_name().to_string(),
        });
    }
    for f in &project.flows {
        g.nodes.push(Node {
            kind: NodeKind::Flow,
            name: f.name.clone(),
            detail: "flow".into(),
        });
    }
    let find = |g: &Graph, kind: NodeKind, name: &str| {
        g.nodes
            .iter()
            .position(|n| n.kind == kind && n.name == name)
    };
    let mut edges = BTreeSet::new();
    for f in &project.flows {
        let Some(me) = find(&g, NodeKind::Flow, &f.name) else {
            continue;
        };
        // A bridge input is drawn by the flow that feeds it.
        if !f.spec.input.starts_with("bridge.")
            && let Some(from) = find(&g, NodeKind::Connector, &f.spec.input)
        {
            edges.insert(Edge {
                from,
                to: me,
                bridge: false,
            });
        }
        for o in &f.spec.outputs {
            let edge = match o.to.strip_prefix("bridge.") {
                Some(target) => find(&g, NodeKind::Flow, target).map(|to| Edge {
                    from: me,
                    to,
                    bridge: true,
                }),
                None => find(&g, NodeKind::Connector, &o.to).map(|to| Edge {
                    from: me,
                    to,
                    bridge: false,
                }),
            };
            edges.extend(edge);
        }
    }
    g.edges = edges.into_iter().collect();
    g
}

const CHAR_W: f64 = 7.5;
const BOX_H: f64 = 44.0;
const PAD: f64 = 20.0;

/// An edge as drawn: its index, its path (`layout-rs`'s bezier segments),
/// whether the head is at the start.
type Drawn = (usize, Vec<(Point, Point)>, bool);

/// Records what `layout-rs` draws: boxes by their node index, edge paths
/// by their edge index (its properties carry the index).
#[derive(Default)]
struct Recorder {
    boxes: Vec<(usize, Point, Point)>,
    /// Edge index, path, whether the head is at the path's start (an edge
    /// `layout-rs` reversed to break a cycle).
    paths: Vec<Drawn>,
}

impl RenderBackend for Recorder {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        _look: &StyleAttr,
        properties: Option<String>,
        _clip: Option<ClipHandle>,
    ) {
        if let Some(i) = properties.and_then(|p| p.parse().ok()) {
            self.boxes.push((i, xy, size));
        }
    }

    fn draw_line(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_circle(&mut self, _: Point, _: Point, _: &StyleAttr, _: Option<String>) {}

    fn draw_text(&mut self, _: Point, _: &str, _: &StyleAttr) {}

    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        _dashed: bool,
        head: (bool, bool),
        _look: &StyleAttr,
        properties: Option<String>,
        _text: &str,
    ) {
        if let Some(i) = properties.and_then(|p| p.parse().ok()) {
            self.paths.push((i, path.to_vec(), head.0 && !head.1));
        }
    }

    fn create_clip(&mut self, _: Point, _: Point, _: usize) -> ClipHandle {
        0
    }
}

/// The graph as an SVG element (inline in the index page). Links are
/// relative to the site's root. An empty graph draws an empty picture.
pub fn svg(g: &Graph) -> String {
    let mut vg = VisualGraph::new(Orientation::LeftToRight);
    let mut handles = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let chars = n.name.chars().count().max(n.detail.chars().count()) as f64;
        let size = Point::new(chars * CHAR_W + 2.0 * PAD, BOX_H);
        let elem = Element::create_with_properties(
            ShapeKind::new_box(""),
            StyleAttr::simple(),
            Orientation::LeftToRight,
            size,
            i.to_string(),
        );
        handles.push(vg.add_node(elem));
    }
    for (i, e) in g.edges.iter().enumerate() {
        if let (Some(&a), Some(&b)) = (handles.get(e.from), handles.get(e.to)) {
            vg.add_edge(Arrow::simple_with_properties("", i.to_string()), a, b);
        }
    }
    let mut rec = Recorder::default();
    if !g.nodes.is_empty() {
        vg.do_it(false, false, false, &mut rec);
    }
    draw(g, &rec)
}

fn draw(g: &Graph, rec: &Recorder) -> String {
    // The picture's extent, with a margin.
    let (mut max_x, mut max_y) = (0.0f64, 0.0f64);
    let mut grow = |p: Point| {
        max_x = max_x.max(p.x);
        max_y = max_y.max(p.y);
    };
    for (_, xy, size) in &rec.boxes {
        grow(Point::new(xy.x + size.x, xy.y + size.y));
    }
    for (_, path, _) in &rec.paths {
        for (a, b) in path {
            grow(*a);
            grow(*b);
        }
    }
    let (w, h) = (max_x + PAD, max_y + PAD);
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="lineage" viewBox="0 0 {w:.0} {h:.0}" width="{w:.0}" height="{h:.0}" role="img" aria-label="lineage: {} nodes, {} edges"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/></marker></defs>"##,
        g.nodes.len(),
        g.edges.len()
    );
    let mut paths: Vec<&Drawn> = rec.paths.iter().collect();
    paths.sort_by_key(|(i, _, _)| *i);
    for (i, path, reversed) in paths {
        let (Some(e), true) = (g.edges.get(*i), path.len() >= 2) else {
            continue;
        };
        let (from, to) = (&g.nodes[e.from], &g.nodes[e.to]);
        let mut d = format!(
            "M {:.1} {:.1} C {:.1} {:.1}, {:.1} {:.1}, {:.1} {:.1}",
            path[0].0.x,
            path[0].0.y,
            path[0].1.x,
            path[0].1.y,
            path[1].0.x,
            path[1].0.y,
            path[1].1.x,
            path[1].1.y
        );
        for (a, b) in &path[2..] {
            let _ = write!(d, " S {:.1} {:.1}, {:.1} {:.1}", a.x, a.y, b.x, b.y);
        }
        let _ = write!(
            out,
            r#"<g class="edge{}" data-from="{}" data-to="{}"><title>{} → {}</title><path d="{d}" {marker}="url(#arrow)"/></g>"#,
            if e.bridge { " bridge" } else { "" },
            esc(&from.id()),
            esc(&to.id()),
            esc(&from.name),
            esc(&to.name),
            marker = if *reversed {
                "marker-start"
            } else {
                "marker-end"
            },
        );
    }
    let mut boxes: Vec<&(usize, Point, Point)> = rec.boxes.iter().collect();
    boxes.sort_by_key(|(i, _, _)| *i);
    for (i, xy, size) in boxes {
        let Some(n) = g.nodes.get(*i) else { continue };
        let (cx, cy) = (xy.x + size.x / 2.0, xy.y + size.y / 2.0);
        let _ = write!(
            out,
            r#"<g class="node {class}" data-node="{id}"><a href="{href}"><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" rx="6"/><text x="{cx:.1}" y="{ty:.1}" class="name">{name}</text><text x="{cx:.1}" y="{dy:.1}" class="detail">{detail}</text></a></g>"#,
            class = n.kind.class(),
            id = esc(&n.id()),
            href = esc(&n.href()),
            x = xy.x,
            y = xy.y,
            w = size.x,
            h = size.y,
            ty = cy - 3.0,
            dy = cy + 13.0,
            name = esc(&n.name),
            detail = esc(&n.detail),
        );
    }
    out.push_str("</svg>");
    out
}

/// Escapes text for HTML/SVG text and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(kind: NodeKind, i: usize) -> Node {
        Node {
            kind,
            name: format!("n{i}"),
            detail: "file".into(),
        }
    }

    /// Counts what the SVG draws, as the browser test does.
    fn check(g: &Graph) {
        let s = svg(g);
        assert_eq!(s.matches("<g class=\"node ").count(), g.nodes.len(), "{s}");
        assert_eq!(s.matches("<g class=\"edge").count(), g.edges.len(), "{s}");
        for n in &g.nodes {
            assert!(s.contains(&format!("data-node=\"{}\"", esc(&n.id()))));
        }
        for e in &g.edges {
            let (a, b) = (&g.nodes[e.from], &g.nodes[e.to]);
            assert!(s.contains(&format!(
                "data-from=\"{}\" data-to=\"{}\"",
                esc(&a.id()),
                esc(&b.id())
            )));
        }
        assert!(!s.contains("NaN"), "{s}");
    }

    #[test]
    fn an_empty_graph_is_an_empty_picture() {
        check(&Graph::default());
    }

    #[test]
    fn a_pipeline_with_a_bridge() {
        let edge = |from, to, bridge| Edge { from, to, bridge };
        let g = Graph {
            nodes: vec![
                node(NodeKind::Connector, 0),
                node(NodeKind::Flow, 1),
                node(NodeKind::Flow, 2),
                node(NodeKind::Connector, 3),
                node(NodeKind::Connector, 4),
            ],
            edges: vec![
                edge(0, 1, false),
                edge(1, 2, true),
                edge(1, 4, false),
                edge(2, 3, false),
            ],
        };
        check(&g);
    }

    /// Projects' shapes: connectors feed flows, flows feed connectors and
    /// (through bridges) other flows — chains, fans, cycles, isolated boxes.
    fn graphs() -> impl Strategy<Value = Graph> {
        (1usize..6, 1usize..8).prop_flat_map(|(flows, connectors)| {
            let n = flows + connectors;
            let links = proptest::collection::btree_set((0..n, 0..n), 0..(3 * n));
            links.prop_map(move |links| {
                let mut g = Graph::default();
                for i in 0..connectors {
                    g.nodes.push(node(NodeKind::Connector, i));
                }
                for i in 0..flows {
                    g.nodes.push(node(NodeKind::Flow, connectors + i));
                }
                let is_flow = |i: usize| i >= connectors;
                g.edges = links
                    .into_iter()
                    // Something flows through a flow: no connector → connector,
                    // no flow feeding itself.
                    .filter(|&(a, b)| a != b && (is_flow(a) || is_flow(b)))
                    .map(|(from, to)| Edge {
                        from,
                        to,
                        bridge: is_flow(from) && is_flow(to),
                    })
                    .collect();
                g
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn every_node_and_edge_is_drawn_once(g in graphs()) {
            check(&g);
        }
    }
}
