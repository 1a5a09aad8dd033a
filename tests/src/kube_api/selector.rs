//! `labelSelector` and `fieldSelector` query parameters: parsed once per request, then
//! matched against every object a list or watch considers.

use std::collections::BTreeMap;

use super::error::ApiError;
use super::object::{Kind, Object};
use super::validation::{label_value_errors, qualified_name_errors};

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key));
        match self {
            Self::Equals(k, v) => get(k) == Some(v),
            // Like the apiserver: `k!=v` and `k notin (..)` also match objects without `k`.
            Self::NotEquals(k, v) => get(k) != Some(v),
            Self::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Self::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Self::Exists(k) => get(k).is_some(),
            Self::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed `labelSelector` (`a=b,c!=d,e in (x,y),f notin (z),g,!h`); empty matches all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

fn parse_error(requirement: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("unable to parse requirement: {requirement:?}: {why}"))
}

fn checked_key(requirement: &str, key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    match qualified_name_errors(key).first() {
        Some(e) => Err(parse_error(requirement, format!("key: Invalid value: {key:?}: {e}"))),
        None => Ok(key.to_owned()),
    }
}

fn checked_value(requirement: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    match label_value_errors(value).first() {
        Some(e) => Err(parse_error(requirement, format!("values: Invalid value: {value:?}: {e}"))),
        None => Ok(value.to_owned()),
    }
}

/// Splits on commas that are not inside a `( .. )` value set.
fn split_top_level(s: &str) -> Result<Vec<&str>, ApiError> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0u32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(|| parse_error(s, "unbalanced ')'"))?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(parse_error(s, "unclosed '('"));
    }
    parts.push(&s[start..]);
    Ok(parts)
}

/// Parses `key in (a,b)` / `key notin (a,b)`, or None if the requirement is another form.
fn parse_set(req: &str) -> Option<Result<LabelRequirement, ApiError>> {
    let open = req.find('(')?;
    let (head, tail) = req.split_at(open);
    let mut words = head.split_whitespace();
    let (key, op) = (words.next()?, words.next()?);
    if words.next().is_some() || !matches!(op, "in" | "notin") {
        return None;
    }
    let parsed = (|| {
        let key = checked_key(req, key)?;
        let inner = tail
            .trim_end()
            .strip_prefix('(')
            .and_then(|t| t.strip_suffix(')'))
            .ok_or_else(|| parse_error(req, "expected a value set in parentheses"))?;
        let values = inner.split(',').map(|v| checked_value(req, v)).collect::<Result<Vec<_>, _>>()?;
        Ok(if op == "in" { LabelRequirement::In(key, values) } else { LabelRequirement::NotIn(key, values) })
    })();
    Some(parsed)
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, ApiError> {
        if selector.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut requirements = Vec::new();
        for req in split_top_level(selector)? {
            let req = req.trim();
            if req.is_empty() {
                return Err(parse_error(selector, "found ',', expected a requirement"));
            }
            let parsed = if let Some(set) = parse_set(req) {
                set?
            } else if let Some(key) = req.strip_prefix('!') {
                LabelRequirement::DoesNotExist(checked_key(req, key)?)
            } else if let Some((k, v)) = req.split_once("!=") {
                LabelRequirement::NotEquals(checked_key(req, k)?, checked_value(req, v)?)
            } else if let Some((k, v)) = req.split_once("==").or_else(|| req.split_once('=')) {
                LabelRequirement::Equals(checked_key(req, k)?, checked_value(req, v)?)
            } else {
                LabelRequirement::Exists(checked_key(req, req)?)
            };
            requirements.push(parsed);
        }
        Ok(Self(requirements))
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// A parsed `fieldSelector` (`f=v`, `f==v`, `f!=v`, comma-separated), checked against
/// the fields the kind indexes, as the apiserver rejects any other field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(kind: Kind, selector: &str) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::BadRequest(format!("invalid selector: '{selector}'; can't understand '{term}'")));
            };
            let field = field.trim();
            if !Object::supports_field(kind, field) {
                return Err(ApiError::BadRequest(format!("field label not supported: {field}")));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    pub fn matches(&self, object: &Object) -> bool {
        self.0.iter().all(|(field, equal, value)| (object.field(field).as_deref() == Some(value.as_str())) == *equal)
    }
}

/// Which objects a list or watch returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, object: &Object) -> bool {
        self.namespace.as_deref().is_none_or(|ns| object.namespace() == ns)
            && self.labels.matches(object.meta().labels.as_ref())
            && self.fields.matches(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn label_selector_forms() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let yes = ["app=web", "app==web", "tier!=back", "app in (web, db)", "x notin (y)", "app", "!x", "app=web,tier"];
        let no = ["app=db", "app!=web", "app in (db)", "tier notin (front)", "x", "!app", "app=web,x"];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(Some(&l)), "{s}");
        }
        for bad in ["a=b,", "bad key=x", "a in (b", "a=b c", "-a"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn field_selector_rejects_unindexed_fields() {
        assert!(FieldSelector::parse(Kind::Pod, "spec.nodeName=n1").is_ok());
        assert!(FieldSelector::parse(Kind::Secret, "spec.nodeName=n1").is_err());
        assert!(FieldSelector::parse(Kind::Secret, "type=Opaque,metadata.name!=x").is_ok());
        assert!(FieldSelector::parse(Kind::Secret, "nonsense").is_err());
    }
}
