//! Top-level C items of a change: which names a changed region of a header or `.c` file
//! declares or defines, and whether the region is made only of whole top-level items that
//! can reach a translation unit solely through those names.
//!
//! Two callers: the header proof (`headers`), which recompiles only the units that can see a
//! declared name when every changed region is such a region (a new inline helper, a macro, a
//! prototype), and `upgrade`'s prerequisites, which carry from the newer tree only the regions
//! that define what a fix needs ([`partial_patch`]).
//!
//! The reading is lexical (comments, strings, braces, parentheses, preprocessor lines); it
//! never guesses: a region it cannot read as whole items is reported as such and the caller
//! falls back to the full proof.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// The lexical state at the start of a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LexState {
    braces: i64,
    parens: i64,
    in_comment: bool,
    /// The previous line ended with a backslash (a macro continues).
    continued: bool,
    /// Code since the last item ended (a declaration's first line, a function's head).
    pending: bool,
}

impl LexState {
    /// Outside every item: where a new top-level item may start.
    pub(crate) fn top_level(self) -> bool {
        self.braces == 0 && self.parens == 0 && !self.in_comment && !self.continued && !self.pending
    }

    /// The state after `line` (comments, string and character literals skipped).
    fn after(mut self, line: &str) -> LexState {
        let directive = !self.continued && !self.in_comment && line.trim_start().starts_with('#');
        let mut tokens = Vec::new();
        lex_tokens(line, &mut self.in_comment, &mut tokens);
        // Braces of a macro body do not nest the file's items.
        if !directive && !self.continued {
            for token in tokens {
                match token {
                    Token::Punct('{') => self.braces += 1,
                    Token::Punct('}') => {
                        self.braces -= 1;
                        // A function body ends its item; an aggregate waits for its `;`.
                        if self.braces == 0 && self.parens == 0 {
                            self.pending = false;
                            continue;
                        }
                    }
                    Token::Punct('(') => self.parens += 1,
                    Token::Punct(')') => self.parens -= 1,
                    Token::Punct(';') if self.braces == 0 && self.parens == 0 => {
                        self.pending = false;
                        continue;
                    }
                    _ => {}
                }
                if self.braces == 0 {
                    self.pending = true;
                }
            }
        }
        self.continued = !self.in_comment && line.trim_end().ends_with('\\');
        self
    }
}

/// The state at the start of each line of `lines`, and after the last (`len + 1` entries).
pub(crate) fn line_states(lines: &[&str]) -> Vec<LexState> {
    let mut states = Vec::with_capacity(lines.len() + 1);
    let mut state = LexState::default();
    states.push(state);
    for line in lines {
        state = state.after(line);
        states.push(state);
    }
    states
}

/// Whether `lines`, read on their own, start and end outside every item and never close more
/// than they opened.
fn balanced(lines: &[&str]) -> bool {
    let mut state = LexState::default();
    for line in lines {
        state = state.after(line);
        if state.braces < 0 || state.parens < 0 {
            return false;
        }
    }
    state.top_level()
}

const KEYWORDS: &[&str] = &[
    "auto",
    "bool",
    "char",
    "const",
    "double",
    "enum",
    "extern",
    "float",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "_Bool",
    "__inline",
    "__inline__",
    "typeof",
    "__typeof__",
    "__attribute__",
    "asm",
    "__asm__",
    "return",
    "if",
    "else",
    "for",
    "while",
    "do",
    "switch",
    "case",
    "default",
    "break",
    "continue",
    "goto",
];

fn is_keyword(word: &str) -> bool {
    KEYWORDS.contains(&word)
}

/// A token of C code outside comments and literals: an identifier or one punctuation char.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Punct(char),
}

/// What the whole items of a region declare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Items {
    /// The names the items declare or define (functions, macros, types, enum constants,
    /// variables; for a top-level macro invocation, the identifiers of its arguments).
    pub names: BTreeSet<String>,
    /// Why a unit that never names any of `names` could still compile differently with these
    /// items (a non-static definition, an `#include`, a top-level macro invocation, …); `None`
    /// when it cannot.
    pub reaches_other_units: Option<String>,
}

impl Items {
    fn wide(&mut self, why: String) {
        if self.reaches_other_units.is_none() {
            self.reaches_other_units = Some(why);
        }
    }
}

/// Reads `lines` (balanced, see [`balanced`]) as whole top-level items.
pub fn items(lines: &[&str]) -> Items {
    let mut found = Items::default();
    let mut conditionals: i64 = 0;
    let mut tokens: Vec<Token> = Vec::new();
    let mut in_comment = false;
    let mut index = 0;
    while let Some(line) = lines.get(index) {
        index += 1;
        let trimmed = line.trim_start();
        if !in_comment && trimmed.starts_with('#') {
            // A directive with its continuation lines.
            let mut text = (*line).to_owned();
            while text.trim_end().ends_with('\\') {
                let Some(next) = lines.get(index) else { break };
                index += 1;
                text = format!("{}\n{next}", text.trim_end().trim_end_matches('\\'));
            }
            let body = text.trim_start().trim_start_matches('#').trim_start();
            let word: String = body
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let rest = body.get(word.len()..).unwrap_or_default().trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            match word.as_str() {
                "define" | "undef" if !name.is_empty() => {
                    found.names.insert(name);
                }
                "if" | "ifdef" | "ifndef" => conditionals += 1,
                "elif" | "else" if conditionals > 0 => {}
                "endif" if conditionals > 0 => conditionals -= 1,
                _ => found.wide(format!("the preprocessor line `{}`", text.trim())),
            }
            continue;
        }
        lex_tokens(line, &mut in_comment, &mut tokens);
    }
    if conditionals != 0 {
        found.wide("an `#if` without its `#endif`".to_owned());
    }
    for item in split_items(&tokens) {
        read_item(item, &mut found);
    }
    found
}

fn lex_tokens(line: &str, in_comment: &mut bool, tokens: &mut Vec<Token>) {
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if *in_comment {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                *in_comment = false;
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => return,
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                *in_comment = true;
            }
            '"' | '\'' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                tokens.push(Token::Punct('"'));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut word = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        word.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Ident(word));
            }
            c if c.is_ascii_digit() => {
                while chars.peek().is_some_and(|d| d.is_ascii_alphanumeric()) {
                    chars.next();
                }
                tokens.push(Token::Punct('0'));
            }
            c if c.is_whitespace() => {}
            c => tokens.push(Token::Punct(c)),
        }
    }
}

/// Splits tokens into top-level items: each ends at a `;` outside braces and parentheses, or
/// at the `}` that closes a function body.
fn split_items(tokens: &[Token]) -> Vec<&[Token]> {
    let mut items = Vec::new();
    let (mut start, mut depth, mut parens) = (0usize, 0i64, 0i64);
    for (at, token) in tokens.iter().enumerate() {
        match token {
            Token::Punct('{') => depth += 1,
            Token::Punct('(') => parens += 1,
            Token::Punct(')') => parens -= 1,
            Token::Punct('}') => {
                depth -= 1;
                // A function body ends the item; a struct, union, enum or initialiser waits
                // for its `;`.
                let aggregate = tokens.get(start..at).is_some_and(opens_aggregate);
                if depth == 0 && parens == 0 && !aggregate {
                    items.extend(tokens.get(start..=at));
                    start = at + 1;
                }
            }
            Token::Punct(';') if depth == 0 && parens == 0 => {
                items.extend(tokens.get(start..=at));
                start = at + 1;
            }
            _ => {}
        }
    }
    if let Some(rest) = tokens.get(start..).filter(|r| !r.is_empty()) {
        items.push(rest);
    }
    items
}

/// Whether the item's first `{` opens a struct, union or enum body (`struct x {`) or an
/// initialiser (`= {`), rather than a function body.
fn opens_aggregate(tokens: &[Token]) -> bool {
    let Some(brace) = tokens.iter().position(|t| *t == Token::Punct('{')) else {
        return false;
    };
    let before = |back: usize| brace.checked_sub(back).and_then(|at| tokens.get(at));
    let kind = |t: Option<&Token>| matches!(t, Some(Token::Ident(w)) if ["struct", "union", "enum"].contains(&w.as_str()));
    kind(before(1))
        || (matches!(before(1), Some(Token::Ident(_))) && kind(before(2)))
        || before(1) == Some(&Token::Punct('='))
}

fn ident(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Ident(w)) => Some(w),
        _ => None,
    }
}

fn read_item(item: &[Token], found: &mut Items) {
    let has = |word: &str| item.iter().any(|t| ident(Some(t)) == Some(word));
    let Some(first) = item.first() else { return };
    if !matches!(item.last(), Some(Token::Punct(';' | '}'))) {
        found.wide("an item without its end".to_owned());
    }
    // `MACRO(args);` at top level: it may expand to anything (a definition, asm); its
    // arguments are what it names.
    if let (Some(name), Some(Token::Punct('('))) = (ident(Some(first)), item.get(1)) {
        // Where the first parenthesised group closes: a macro invocation ends there (an
        // attribute-like `__printf(1, 2)` is followed by the declaration it qualifies).
        let mut parens = 0i64;
        let close = item.iter().enumerate().skip(1).find_map(|(at, t)| {
            match t {
                Token::Punct('(') => parens += 1,
                Token::Punct(')') => parens -= 1,
                _ => {}
            }
            (parens == 0).then_some(at)
        });
        let invocation =
            close.is_some_and(|at| matches!(item.get(at + 1), None | Some(Token::Punct(';'))));
        if invocation && !is_keyword(name) {
            let arguments: Vec<&str> = item
                .iter()
                .skip(2)
                .filter_map(|t| ident(Some(t)))
                .filter(|w| !is_keyword(w))
                .collect();
            found
                .names
                .extend(arguments.iter().map(|w| (*w).to_owned()));
            found.wide(format!("the top-level macro invocation `{name}(…)`"));
            return;
        }
    }
    // Depth of each token (before it): braces and parentheses.
    let mut depth = Vec::with_capacity(item.len());
    let (mut braces, mut parens) = (0i64, 0i64);
    for token in item {
        depth.push((braces, parens));
        match token {
            Token::Punct('{') => braces += 1,
            Token::Punct('}') => braces -= 1,
            Token::Punct('(') => parens += 1,
            Token::Punct(')') => parens -= 1,
            _ => {}
        }
    }
    let outer = |at: usize| depth.get(at) == Some(&(0, 0));
    let body_at = item
        .iter()
        .enumerate()
        .position(|(at, t)| outer(at) && *t == Token::Punct('{'));
    let aggregate = body_at
        .filter(|&b| opens_aggregate(item.get(..=b).unwrap_or_default()))
        .and_then(|b| {
            (1..=2)
                .map(|back| b.wrapping_sub(back))
                .find(|&at| matches!(ident(item.get(at)), Some("struct" | "union" | "enum")))
        });
    if let (Some(kind_at), Some(body)) = (aggregate, body_at) {
        if let Some(tag) = ident(item.get(kind_at + 1)).filter(|_| kind_at + 1 < body) {
            found.names.insert(tag.to_owned());
        }
        if ident(item.get(kind_at)) == Some("enum") {
            // Each enumerator: the identifier after `{` or a `,` at brace depth 1.
            for (at, t) in item.iter().enumerate().skip(body) {
                if depth.get(at) == Some(&(1, 0))
                    && matches!(item.get(at.wrapping_sub(1)), Some(Token::Punct('{' | ',')))
                {
                    if let Some(w) = ident(Some(t)) {
                        found.names.insert(w.to_owned());
                    }
                }
            }
        }
        // Declarators after the closing brace: a typedef's name, or a variable.
        let declarators: Vec<&str> = item
            .iter()
            .enumerate()
            .skip(body)
            .filter(|(at, _)| outer(*at) && item.get(at + 1) != Some(&Token::Punct('(')))
            .filter_map(|(_, t)| ident(Some(t)))
            .filter(|w| !is_keyword(w))
            .collect();
        found
            .names
            .extend(declarators.iter().map(|w| (*w).to_owned()));
        if !declarators.is_empty() && !has("typedef") && !has("extern") && !has("static") {
            found.wide("a variable defined with its type".to_owned());
        }
        return;
    }
    if has("typedef") {
        // `typedef int (*name)(…);` or `typedef struct x name;`
        let pointer_name = item.windows(3).find_map(|w| match w {
            [Token::Punct('('), Token::Punct('*'), Token::Ident(n)] => Some(n.clone()),
            _ => None,
        });
        let last = item
            .iter()
            .enumerate()
            .filter(|(at, _)| outer(*at))
            .filter_map(|(_, t)| ident(Some(t)))
            .rfind(|w| !is_keyword(w))
            .map(str::to_owned);
        match pointer_name.or(last) {
            Some(name) => {
                found.names.insert(name);
            }
            None => found.wide("a typedef without a name".to_owned()),
        }
        return;
    }
    // A function: the first `name (` outside parentheses, skipping attribute-like
    // `__x(…)` groups that another `name (` follows.
    let calls: Vec<(usize, &str)> = item
        .iter()
        .enumerate()
        .filter(|(at, _)| outer(*at))
        .filter_map(|(at, t)| {
            let w = ident(Some(t))?;
            (item.get(at + 1) == Some(&Token::Punct('('))).then_some((at, w))
        })
        .filter(|(_, w)| !is_keyword(w))
        .collect();
    let function = calls
        .iter()
        .enumerate()
        .find(|(i, (_, w))| !(w.starts_with("__") && i + 1 < calls.len()))
        .map(|(_, c)| *c);
    if let Some((at, name)) = function {
        found.names.insert(name.to_owned());
        let storage_static = item
            .iter()
            .take(at)
            .any(|t| ident(Some(t)) == Some("static"));
        if body_at.is_some() && !storage_static {
            found.wide(format!("`{name}` is defined without `static`"));
        }
        return;
    }
    // A variable: the last identifier before `=`, `[`, `:` or `;`.
    let end = item
        .iter()
        .enumerate()
        .position(|(at, t)| outer(at) && matches!(t, Token::Punct('=' | '[' | ':' | ';')))
        .unwrap_or(item.len());
    let name = item
        .iter()
        .take(end)
        .filter_map(|t| ident(Some(t)))
        .rfind(|w| !is_keyword(w));
    match name {
        Some(name) => {
            found.names.insert(name.to_owned());
            if !has("extern") && !has("static") {
                found.wide(format!("the variable `{name}` is defined"));
            }
        }
        None => found.wide("an item that names nothing".to_owned()),
    }
}

/// One changed region between two versions of a file: 0-based line ranges of each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The lines of the old text it replaces.
    pub old: Range<usize>,
    /// The lines of the new text it puts there.
    pub new: Range<usize>,
}

/// Why the changed regions of a file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RegionsError {
    /// `diff` could not be run or failed.
    #[error("run `diff -U0` on {path}: {reason}; install diffutils")]
    Diff {
        /// One of the two files.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// The changed regions between the files `old` and `new` (`diff -U0`), each widened to whole
/// top-level items on both sides, merged where they then touch. A region that cannot be
/// widened (an item longer than a few hundred lines, unbalanced text) stays as `diff` gave it
/// and reads as not whole ([`Region::whole`]).
pub fn regions(
    old: &Path,
    new: &Path,
    old_lines: &[&str],
    new_lines: &[&str],
) -> Result<Vec<Region>, RegionsError> {
    let output = Command::new("diff")
        .arg("-U0")
        .arg(old)
        .arg(new)
        .output()
        .map_err(|e| RegionsError::Diff {
            path: old.display().to_string(),
            reason: e.to_string(),
        })?;
    if !matches!(output.status.code(), Some(0 | 1)) {
        return Err(RegionsError::Diff {
            path: old.display().to_string(),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let raw: Vec<Region> = text
        .lines()
        .filter_map(|l| l.strip_prefix("@@ -"))
        .filter_map(|l| {
            let (old, rest) = l.split_once(" +")?;
            let (new, _) = rest.split_once(" @@")?;
            Some(Region {
                old: zero_context_range(old)?,
                new: zero_context_range(new)?,
            })
        })
        .collect();
    Ok(widen_all(&raw, old_lines, new_lines))
}

/// Most unchanged lines a region is widened by to reach whole items.
const WIDEN_LIMIT: usize = 400;

/// Widens each of `raw` (in order, the unchanged lines between them equal on both sides) to
/// whole top-level items; a region that reaches the next takes it in.
fn widen_all(raw: &[Region], old_lines: &[&str], new_lines: &[&str]) -> Vec<Region> {
    let old_states = line_states(old_lines);
    let new_states = line_states(new_lines);
    let start_ok = |r: &Region| {
        old_states.get(r.old.start).is_some_and(|s| s.top_level())
            && new_states.get(r.new.start).is_some_and(|s| s.top_level())
    };
    let sides_ok = |r: &Region| {
        old_lines.get(r.old.clone()).is_some_and(balanced)
            && new_lines.get(r.new.clone()).is_some_and(balanced)
    };
    let mut out: Vec<Region> = Vec::new();
    let mut next = raw.iter().peekable();
    while let Some(first) = next.next() {
        let mut region = first.clone();
        let mut steps = 0;
        while !start_ok(&region) && region.old.start > 0 && region.new.start > 0 {
            if steps >= WIDEN_LIMIT {
                break;
            }
            region.old.start -= 1;
            region.new.start -= 1;
            steps += 1;
            if let Some(last) = out.last().filter(|l| l.old.end > region.old.start) {
                region.old.start = last.old.start;
                region.new.start = last.new.start;
                out.pop();
            }
        }
        steps = 0;
        while !sides_ok(&region) && steps < WIDEN_LIMIT {
            if let Some(following) = next.next_if(|n| n.old.start <= region.old.end) {
                region.old.end = following.old.end;
                region.new.end = following.new.end;
                continue;
            }
            if region.old.end >= old_lines.len() || region.new.end >= new_lines.len() {
                break;
            }
            region.old.end += 1;
            region.new.end += 1;
            steps += 1;
        }
        out.push(region);
    }
    out
}

/// `12,3` (a `-U0` hunk side) → lines 11..14; `12,0` (nothing, after line 12) → 12..12.
fn zero_context_range(text: &str) -> Option<Range<usize>> {
    let (start, count) = match text.split_once(',') {
        Some((s, c)) => (s.parse::<usize>().ok()?, c.parse::<usize>().ok()?),
        None => (text.parse::<usize>().ok()?, 1),
    };
    if count == 0 {
        Some(start..start)
    } else {
        let first = start.checked_sub(1)?;
        Some(first..first + count)
    }
}

impl Region {
    /// Whether both sides are whole top-level items.
    pub fn whole(&self, old_lines: &[&str], new_lines: &[&str]) -> bool {
        let old_states = line_states(old_lines);
        old_states
            .get(self.old.start)
            .is_some_and(|s| s.top_level())
            && old_lines.get(self.old.clone()).is_some_and(balanced)
            && new_lines.get(self.new.clone()).is_some_and(balanced)
    }

    /// The items of both sides: what the region removes and what it adds.
    pub fn items(&self, old_lines: &[&str], new_lines: &[&str]) -> (Items, Items) {
        (
            items(old_lines.get(self.old.clone()).unwrap_or_default()),
            items(new_lines.get(self.new.clone()).unwrap_or_default()),
        )
    }
}

/// Context lines around each hunk of a [`partial_patch`].
const CONTEXT: usize = 3;

/// A unified diff (`a/`/`b/` headers) of `path` that applies only `chosen` of its regions to
/// the old text: the new text's lines for those, the old text everywhere else.
pub fn partial_patch(
    path: &str,
    old_lines: &[&str],
    new_lines: &[&str],
    chosen: &[Region],
) -> String {
    // Hunks: groups of chosen regions whose contexts touch.
    let mut groups: Vec<Vec<&Region>> = Vec::new();
    for region in chosen {
        match groups.last_mut() {
            Some(group)
                if group
                    .last()
                    .is_some_and(|last| last.old.end + 2 * CONTEXT >= region.old.start) =>
            {
                group.push(region)
            }
            _ => groups.push(vec![region]),
        }
    }
    let mut out = format!("--- a/{path}\n+++ b/{path}\n");
    // How far the partial new text's lines are from the old text's, before each hunk.
    let mut offset: i64 = 0;
    for group in groups {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let start = first.old.start.saturating_sub(CONTEXT);
        let end = (last.old.end + CONTEXT).min(old_lines.len());
        let mut body = String::new();
        let (mut old_count, mut new_count) = (0usize, 0usize);
        let mut at = start;
        for region in &group {
            for line in old_lines.get(at..region.old.start).unwrap_or_default() {
                body.push_str(&format!(" {line}\n"));
                old_count += 1;
                new_count += 1;
            }
            for line in old_lines.get(region.old.clone()).unwrap_or_default() {
                body.push_str(&format!("-{line}\n"));
                old_count += 1;
            }
            for line in new_lines.get(region.new.clone()).unwrap_or_default() {
                body.push_str(&format!("+{line}\n"));
                new_count += 1;
            }
            at = region.old.end;
        }
        for line in old_lines.get(at..end).unwrap_or_default() {
            body.push_str(&format!(" {line}\n"));
            old_count += 1;
            new_count += 1;
        }
        let old_start = if old_count == 0 { start } else { start + 1 };
        let new_start = i64::try_from(start).unwrap_or(i64::MAX) + offset;
        let new_start = if new_count == 0 {
            new_start
        } else {
            new_start + 1
        };
        out.push_str(&format!(
            "@@ -{old_start},{old_count} +{new_start},{new_count} @@\n{body}"
        ));
        offset += i64::try_from(new_count).unwrap_or(0) - i64::try_from(old_count).unwrap_or(0);
    }
    out
}

/// The identifiers `text` uses as code (comments and literals left out).
pub fn identifiers(text: &str) -> BTreeSet<String> {
    let mut tokens = Vec::new();
    let mut in_comment = false;
    for line in text.lines() {
        lex_tokens(line, &mut in_comment, &mut tokens);
    }
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Ident(w) => Some(w),
            Token::Punct(_) => None,
        })
        .collect()
}

/// Whether `text` names `word` as a C identifier.
pub fn mentions(text: &str, word: &str) -> bool {
    super::objects::contains_word(text, word, |c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// Lines of include/linux/netdevice.h (6.12.95) around where 6.12.107 added the
    /// `dev_dstats_*` helpers, and the same place in 6.12.107.
    const OLD_NETDEVICE: &str = "\
struct pcpu_dstats {
	u64_stats_t		rx_packets;
	u64_stats_t		rx_bytes;
	u64_stats_t		rx_drops;
	u64_stats_t		tx_packets;
	struct u64_stats_sync	syncp;
} __aligned(8 * sizeof(u64));

static inline void dev_sw_netstats_rx_add(struct net_device *dev, unsigned int len)
{
	struct pcpu_sw_netstats *tstats = this_cpu_ptr(dev->tstats);

	u64_stats_update_begin(&tstats->syncp);
	u64_stats_add(&tstats->rx_bytes, len);
	u64_stats_update_end(&tstats->syncp);
}

#define LL_RESERVED_SPACE(dev) \\
	((((dev)->hard_header_len + READ_ONCE((dev)->needed_headroom)) \\
	  & ~(HH_DATA_MOD - 1)) + HH_DATA_MOD)
";

    fn new_netdevice() -> String {
        OLD_NETDEVICE
            .replace(
                "} __aligned(8 * sizeof(u64));\n",
                "} __aligned(8 * sizeof(u64));\n\
                 \n\
                 static inline void dev_dstats_rx_dropped(struct net_device *dev)\n\
                 {\n\
                 \tstruct pcpu_dstats *dstats = this_cpu_ptr(dev->dstats);\n\
                 \n\
                 \tu64_stats_update_begin(&dstats->syncp);\n\
                 \tu64_stats_inc(&dstats->rx_drops);\n\
                 \tu64_stats_update_end(&dstats->syncp);\n\
                 }\n",
            )
            .replace(
                "\tu64_stats_t\t\trx_drops;\n\tu64_stats_t\t\ttx_packets;\n",
                "\tu64_stats_t\t\ttx_packets;\n\tu64_stats_t\t\trx_drops;\n",
            )
            .replace(
                "#define LL_RESERVED_SPACE(dev) \\\n\t((((dev)->hard_header_len",
                "#define LL_RESERVED_SPACE_EX(dev, hlen) \\\n\t((((hlen)",
            )
            + "#define LL_RESERVED_SPACE(dev) \\\n\tLL_RESERVED_SPACE_EX(dev, (dev)->hard_header_len)\n"
    }

    fn regions_of(dir: &Path, old: &str, new: &str) -> Vec<Region> {
        std::fs::write(dir.join("old.h"), old).unwrap();
        std::fs::write(dir.join("new.h"), new).unwrap();
        let (o, n): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        regions(&dir.join("old.h"), &dir.join("new.h"), &o, &n).unwrap()
    }

    fn netdevice_regions(dir: &Path) -> (String, Vec<Region>) {
        let new = new_netdevice();
        let regions = regions_of(dir, OLD_NETDEVICE, &new);
        (new, regions)
    }

    #[test]
    fn regions_are_widened_to_whole_items_and_name_what_they_declare() {
        let dir = tempfile::tempdir().unwrap();
        let (new, regions) = netdevice_regions(dir.path());
        let (o, n): (Vec<&str>, Vec<&str>) =
            (OLD_NETDEVICE.lines().collect(), new.lines().collect());
        assert_eq!(regions.len(), 4, "{regions:?}");
        // The moved struct member: the whole struct, which names its tag.
        let (removed, added) = regions[0].items(&o, &n);
        assert!(regions[0].whole(&o, &n));
        assert_eq!(added.names, BTreeSet::from(["pcpu_dstats".to_owned()]));
        assert_eq!(removed.names, added.names);
        // The new static inline helper: only its own name, reaching no unit that lacks it.
        let (removed, added) = regions[1].items(&o, &n);
        assert!(removed.names.is_empty());
        assert_eq!(
            added.names,
            BTreeSet::from(["dev_dstats_rx_dropped".to_owned()])
        );
        assert_eq!(added.reaches_other_units, None);
        // The macro renamed (its continuation lines taken in), and its old name redefined.
        let (removed, added) = regions[2].items(&o, &n);
        assert_eq!(
            removed.names,
            BTreeSet::from(["LL_RESERVED_SPACE".to_owned()])
        );
        assert_eq!(
            added.names,
            BTreeSet::from(["LL_RESERVED_SPACE_EX".to_owned()])
        );
        assert_eq!(regions[2].old.len(), 3, "{regions:?}");
        let (_, added) = regions[3].items(&o, &n);
        assert_eq!(
            added.names,
            BTreeSet::from(["LL_RESERVED_SPACE".to_owned()])
        );
    }

    #[test]
    fn a_changed_function_head_takes_its_body_in() {
        // include/net/inet_frag.h, 6.12.95 → 6.12.107: a helper renamed with a new argument.
        let old = "void inet_frag_kill(struct inet_frag_queue *q);\n\n\
                   static inline void inet_frag_put(struct inet_frag_queue *q)\n{\n\
                   \tif (refcount_dec_and_test(&q->refcnt))\n\
                   \t\tinet_frag_destroy(q);\n}\n\nint other(void);\n";
        let new = old
            .replace("*q);\n\n", "*q, int *refs);\n\n")
            .replace(
                "inet_frag_put(struct inet_frag_queue *q)",
                "inet_frag_putn(struct inet_frag_queue *q, int refs)",
            )
            .replace(
                "if (refcount_dec_and_test(&q->refcnt))",
                "if (refs && refcount_sub_and_test(refs, &q->refcnt))",
            );
        let dir = tempfile::tempdir().unwrap();
        let (o, n): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        let regions = regions_of(dir.path(), old, &new);
        assert_eq!(regions.len(), 2, "{regions:?}");
        assert_eq!(regions[1].old, 2..7, "{regions:?}");
        let (removed, added) = regions[1].items(&o, &n);
        assert_eq!(removed.names, BTreeSet::from(["inet_frag_put".to_owned()]));
        assert_eq!(added.names, BTreeSet::from(["inet_frag_putn".to_owned()]));
        assert_eq!(added.reaches_other_units, None);
    }

    #[test]
    fn a_partial_patch_applies_only_the_chosen_regions() {
        let dir = tempfile::tempdir().unwrap();
        let (new, regions) = netdevice_regions(dir.path());
        let (o, n): (Vec<&str>, Vec<&str>) =
            (OLD_NETDEVICE.lines().collect(), new.lines().collect());
        let chosen: Vec<Region> = regions
            .iter()
            .filter(|r| r.items(&o, &n).1.names.contains("dev_dstats_rx_dropped"))
            .cloned()
            .collect();
        assert_eq!(chosen.len(), 1);
        let patch = partial_patch("include/linux/netdevice.h", &o, &n, &chosen);
        std::fs::create_dir_all(dir.path().join("include/linux")).unwrap();
        std::fs::write(dir.path().join("include/linux/netdevice.h"), OLD_NETDEVICE).unwrap();
        std::fs::write(dir.path().join("p.patch"), &patch).unwrap();
        let status = Command::new("patch")
            .current_dir(dir.path())
            .args(["-p1", "-F0", "-s", "-i", "p.patch"])
            .status()
            .unwrap();
        assert!(status.success(), "{patch}");
        let result = std::fs::read_to_string(dir.path().join("include/linux/netdevice.h")).unwrap();
        assert!(
            result.contains("static inline void dev_dstats_rx_dropped"),
            "{result}"
        );
        // The other regions stay as the old text has them.
        assert!(!result.contains("LL_RESERVED_SPACE_EX"), "{result}");
        assert!(
            result.contains("rx_drops;\n\tu64_stats_t\t\ttx_packets;"),
            "{result}"
        );
    }

    #[test]
    fn what_can_reach_units_that_never_name_it_is_said() {
        let read = |text: &str| items(&text.lines().collect::<Vec<_>>());
        // A changed prototype (include/net/inet_frag.h in 6.12.107): its name only.
        let prototype = read("void inet_frag_kill(struct inet_frag_queue *q, int *refs);\n");
        assert_eq!(
            prototype.names,
            BTreeSet::from(["inet_frag_kill".to_owned()])
        );
        assert_eq!(prototype.reaches_other_units, None);
        // An attribute before the name does not hide it.
        let printf = read(
            "__printf(2, 3) void dev_err_probe_x(const struct device *d, const char *f, ...);\n",
        );
        assert_eq!(printf.names, BTreeSet::from(["dev_err_probe_x".to_owned()]));
        // A cleanup class (DEFINE_FREE): a macro invocation, which may expand to anything.
        let cleanup = read("DEFINE_FREE(kvfree, void *, if (!IS_ERR_OR_NULL(_T)) kvfree(_T))\n");
        assert!(cleanup.names.contains("kvfree"));
        assert!(cleanup.reaches_other_units.is_some());
        // Definitions every unit would emit, and includes, reach units that name nothing.
        for text in [
            "int counter = 1;\n",
            "void helper(void)\n{\n}\n",
            "#include <linux/types.h>\n",
            "#pragma GCC diagnostic push\n",
        ] {
            assert!(read(text).reaches_other_units.is_some(), "{text}");
        }
        // An enum names its constants; a conditional block its items.
        let e = read("enum skb_drop_reason_x {\n\tSKB_A,\n\tSKB_B = 3,\n};\n");
        assert_eq!(
            e.names,
            BTreeSet::from([
                "SKB_A".to_owned(),
                "SKB_B".to_owned(),
                "skb_drop_reason_x".to_owned()
            ])
        );
        // A function returning a struct pointer is a function, not a struct.
        let function = read(
            "struct dentry *kern_path_parent(const char *name, struct path *path)\n{\n\
             \tstruct dentry *d = NULL;\n\treturn d;\n}\n",
        );
        assert_eq!(
            function.names,
            BTreeSet::from(["kern_path_parent".to_owned()])
        );
        assert!(function.reaches_other_units.is_some());
        let conditional = read(
            "#ifdef CONFIG_X\nint rtnl_net_trylock(struct net *net);\n#else\n\
             static inline int rtnl_net_trylock(struct net *net)\n{\n\treturn rtnl_trylock();\n}\n#endif\n",
        );
        assert_eq!(
            conditional.names,
            BTreeSet::from(["rtnl_net_trylock".to_owned()])
        );
        assert_eq!(conditional.reaches_other_units, None);
    }
}
