//! Import rules checked on a crate's source (ARCHITECTURE.md's "Architecture Invariant" lines):
//! privacy alone cannot say "the store never imports the write path" or "commands never import
//! one another". A crate's `#[cfg(test)] mod tidy` lists its rules and uses these readers.
//!
//! The source is read with syn, as the compiler reads it: every path a file names (`use` trees
//! expanded, paths in expressions, types and patterns, and the `crate::`/`super::` paths inside
//! macro calls) is resolved to a path from the crate root, so `super::super::api::rpc` from
//! `users/commit.rs` is `api::rpc`, and a comment or a string that mentions a module is not an
//! import. Test code is exempt (items under `#[cfg(test)]`): a test may build any peer it needs.

use proc_macro2::{TokenStream, TokenTree};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Every `.rs` file under `dir`.
pub fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part a source file belongs to (its folder, or its own name at the top), and its
/// module's path from the crate root (`users/commit.rs` → `users::commit`; `users/mod.rs` →
/// `users`; `lib.rs` and `main.rs` → the root).
pub fn place(src: &Path, file: &Path) -> (String, Vec<String>) {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let mut module: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .collect();
    if module.last().is_some_and(|n| n == "mod") || module == ["lib"] || module == ["main"] {
        module.pop();
    }
    let part = rel
        .components()
        .next()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned()
        })
        .unwrap_or_default();
    (part, module)
}

/// One source file as the rules see it: the crate-rooted paths its non-test code names.
pub struct Source {
    /// Each path from the crate root (`["users", "state", "Shared"]`); a glob ends in `*`.
    pub paths: Vec<Vec<String>>,
    /// The same, for `pub use` items only: what the module re-exports.
    pub exported: Vec<Vec<String>>,
}

impl Source {
    /// Reads `file`, the module at `module` (see [`place`]).
    pub fn read(file: &Path, module: &[String]) -> Self {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Self::parse(&text, module).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    /// As [`Source::read`], from the text of a file.
    pub fn parse(text: &str, module: &[String]) -> syn::Result<Self> {
        let file = syn::parse_file(text)?;
        let children: BTreeSet<String> = file
            .items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Mod(m) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect();
        let mut reader = Reader::default();
        let mut exported = Vec::new();
        for item in file.items.iter().filter(|i| !is_test(i)) {
            if let syn::Item::Use(u) = item
                && matches!(u.vis, syn::Visibility::Public(_))
            {
                let mut found = Reader::default();
                found.use_tree(&mut Vec::new(), &u.tree);
                exported.extend(found.raw);
            }
            reader.visit_item(item);
        }
        let rooted = |raw: Vec<Vec<String>>| {
            raw.into_iter()
                .filter_map(|p| from_root(p, module, &children))
                .collect()
        };
        Ok(Self {
            paths: rooted(reader.raw),
            exported: rooted(exported),
        })
    }

    /// The names that follow `prefix` (from the crate root) in any path: with `["commands"]`,
    /// `commands::deploy::Options` gives `deploy`.
    pub fn names_after(&self, prefix: &[&str]) -> BTreeSet<String> {
        names_after(&self.paths, prefix)
    }

    /// The top-level parts this file names (`crate::x`, however it is written).
    pub fn imports(&self) -> BTreeSet<String> {
        self.names_after(&[])
    }

    /// Whether it imports everything of the module at `prefix` by a glob.
    pub fn globs(&self, prefix: &[&str]) -> bool {
        self.paths.iter().any(|p| {
            p.len() == prefix.len() + 1
                && p.last().is_some_and(|l| l == "*")
                && p.iter().zip(prefix).all(|(a, b)| a == b)
        })
    }
}

/// The names right after `prefix` in `paths`.
pub fn names_after(paths: &[Vec<String>], prefix: &[&str]) -> BTreeSet<String> {
    paths
        .iter()
        .filter(|p| p.len() > prefix.len() && p.iter().zip(prefix).all(|(a, b)| a == b))
        .map(|p| p[prefix.len()].clone())
        .filter(|n| n != "*")
        .collect()
}

/// Whether an item is compiled only for tests (`#[cfg(test)]`).
fn is_test(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Const(c) => &c.attrs,
        _ => return false,
    };
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// `raw` (as written) from the crate root, seen from `module`: `crate::…` and chains of
/// `super::`/`self::` resolved, and a first name that is one of this file's child modules
/// (`use journal::Op` in `store/mod.rs`). `None`: a path outside the crate (std, a crate, a
/// local item).
fn from_root(
    raw: Vec<String>,
    module: &[String],
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let first = raw.first()?.as_str();
    if first == "crate" {
        return Some(raw[1..].to_vec());
    }
    if first == "super" || first == "self" {
        let mut here = module.to_vec();
        let mut rest = raw.as_slice();
        while let Some(head) = rest.first() {
            match head.as_str() {
                "super" => {
                    here.pop()?;
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        here.extend(rest.iter().cloned());
        return Some(here);
    }
    if children.contains(first) {
        let mut here = module.to_vec();
        here.extend(raw);
        return Some(here);
    }
    None
}

/// Collects every path of what it visits, as written.
#[derive(Default)]
struct Reader {
    raw: Vec<Vec<String>>,
}

impl Reader {
    /// A `use` tree, expanded: `a::{b, c::d}` → `a::b`, `a::c::d`; `a::*` ends in `*`.
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.push(prefix, &n.ident.to_string()),
            syn::UseTree::Rename(r) => self.push(prefix, &r.ident.to_string()),
            syn::UseTree::Glob(_) => self.push(prefix, "*"),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn push(&mut self, prefix: &[String], last: &str) {
        let mut path = prefix.to_vec();
        if last != "self" {
            path.push(last.to_owned());
        }
        self.raw.push(path);
    }

    /// Paths inside a macro call's tokens (`format!("{}", crate::x::y())`): each run of
    /// `crate`, `super` or `self` followed by `::`-joined names.
    fn tokens(&mut self, tokens: TokenStream) {
        let flat: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < flat.len() {
            match &flat[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if ["crate", "super", "self"].contains(&id.to_string().as_str()) =>
                {
                    let mut path = vec![id.to_string()];
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(n)),
                    ) = (flat.get(i + 1), flat.get(i + 2), flat.get(i + 3))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        path.push(n.to_string());
                        i += 3;
                    }
                    if path.len() > 1 {
                        self.raw.push(path);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Reader {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        if !is_test(item) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.raw
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(module: &[&str], text: &str) -> Source {
        let module: Vec<String> = module.iter().map(|s| (*s).to_owned()).collect();
        Source::parse(text, &module).expect("parses")
    }

    #[test]
    fn every_way_of_naming_a_part_is_read_from_the_root() {
        let lib = at(
            &[],
            "use crate::{doc::{Entry, Record}, store};\nfn f() { crate::users::validate::x(); }",
        );
        assert_eq!(
            lib.imports().into_iter().collect::<Vec<_>>(),
            ["doc", "store", "users"]
        );
        // From a folder's child, `super` is the folder and `super::super` the root.
        let child = at(
            &["users", "commit"],
            "use super::state::Shared;\nuse super::super::api::rpc;\nfn g() { let _ = format!(\"{}\", crate::pull::X); }",
        );
        assert_eq!(
            child.imports().into_iter().collect::<Vec<_>>(),
            ["api", "pull", "users"]
        );
        assert!(child.names_after(&["users"]).contains("state"));
        // A child module named by its own name in its folder's mod.rs.
        let folder = at(
            &["store"],
            "mod journal;\npub use journal::Op;\nuse std::io::Read;",
        );
        assert_eq!(folder.exported, [vec!["store", "journal", "Op"]]);
        // Comments, strings and test code name nothing.
        let quiet = at(
            &["a"],
            "// crate::b\nfn h() { let _ = \"crate::c\"; }\n#[cfg(test)]\nmod tests { use crate::d; }",
        );
        assert!(quiet.imports().is_empty(), "{:?}", quiet.paths);
        assert!(at(&["x"], "use crate::*;").globs(&[]));
    }

    #[test]
    fn files_are_placed_by_their_module() {
        let src = Path::new("/s");
        let placed = |f: &str| place(src, &src.join(f));
        assert_eq!(placed("lib.rs"), ("lib".to_owned(), vec![]));
        assert_eq!(
            placed("users/mod.rs"),
            ("users".to_owned(), vec!["users".to_owned()])
        );
        assert_eq!(
            placed("users/commit.rs"),
            (
                "users".to_owned(),
                vec!["users".to_owned(), "commit".to_owned()]
            )
        );
    }
}
