//! Tensor shapes with symbolic dimensions.
//!
//! A dimension is either a known size (a model's width, a number of patches) or a symbol whose
//! size is only known when data arrives (`B`, the batch). Two known sizes agree when they are
//! equal; two symbols agree when they are the same symbol; a symbol never agrees with a number,
//! so a shape check holds for every batch size, not just the one in the data spec.

use std::fmt;

#[derive(Clone, Debug, Eq, Hash, serde::Serialize)]
pub struct Dim {
    /// The size, when known at compile time.
    pub size: Option<u64>,
    /// The symbol for an unknown size (`B`), or where a known size came from
    /// (`teacher.dim`), shown in messages.
    pub name: Option<String>,
}

impl Dim {
    pub fn known(size: u64) -> Dim {
        Dim {
            size: Some(size),
            name: None,
        }
    }

    pub fn named(size: u64, name: impl Into<String>) -> Dim {
        Dim {
            size: Some(size),
            name: Some(name.into()),
        }
    }

    pub fn symbol(name: impl Into<String>) -> Dim {
        Dim {
            size: None,
            name: Some(name.into()),
        }
    }

    /// The batch dimension.
    pub fn batch() -> Dim {
        Dim::symbol("B")
    }

    pub fn is_one(&self) -> bool {
        self.size == Some(1)
    }

    /// The sum of two dimensions (concatenation), known only when both are.
    pub fn add(&self, other: &Dim) -> Dim {
        match (self.size, other.size) {
            (Some(a), Some(b)) => Dim::known(a + b),
            _ => Dim::symbol(format!("{self}+{other}")),
        }
    }

    /// Describes where the size came from, for messages: `512 (teacher.dim)`.
    pub fn describe(&self) -> String {
        match (&self.size, &self.name) {
            (Some(s), Some(n)) => format!("{s} ({n})"),
            (Some(s), None) => s.to_string(),
            (None, Some(n)) => n.clone(),
            (None, None) => "?".to_string(),
        }
    }
}

impl PartialEq for Dim {
    fn eq(&self, other: &Dim) -> bool {
        match (self.size, other.size) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.name == other.name,
            _ => false,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.size, &self.name) {
            (Some(s), _) => write!(f, "{s}"),
            (None, Some(n)) => write!(f, "{n}"),
            (None, None) => write!(f, "?"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    pub fn scalar() -> Shape {
        Shape(Vec::new())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn is_scalar(&self) -> bool {
        self.0.is_empty()
    }

    pub fn last(&self) -> Option<&Dim> {
        self.0.last()
    }

    /// Resolves a possibly negative axis; `None` when out of range.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        let rank = self.rank() as i64;
        let resolved = if axis < 0 { rank + axis } else { axis };
        (0..rank).contains(&resolved).then_some(resolved as usize)
    }

    pub fn without(&self, axis: usize) -> Shape {
        let mut dims = self.0.clone();
        dims.remove(axis);
        Shape(dims)
    }

    /// Every dimension known: the element count.
    pub fn numel(&self) -> Option<u64> {
        self.0.iter().map(|d| d.size).product()
    }

    /// The shape of an elementwise result under NumPy broadcasting, or `None` when the shapes
    /// cannot broadcast.
    pub fn broadcast(&self, other: &Shape) -> Option<Shape> {
        let rank = self.rank().max(other.rank());
        let mut dims = Vec::with_capacity(rank);
        for i in 0..rank {
            let a = (i + self.rank()).checked_sub(rank).map(|j| &self.0[j]);
            let b = (i + other.rank()).checked_sub(rank).map(|j| &other.0[j]);
            let dim = match (a, b) {
                (Some(a), Some(b)) if a == b => a.clone(),
                (Some(a), Some(b)) if a.is_one() => b.clone(),
                (Some(a), Some(b)) if b.is_one() => a.clone(),
                (Some(_), Some(_)) => return None,
                (Some(a), None) | (None, Some(a)) => a.clone(),
                (None, None) => unreachable!(),
            };
            dims.push(dim);
        }
        Some(Shape(dims))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_never_equal_numbers() {
        assert_ne!(Dim::batch(), Dim::known(32));
        assert_eq!(Dim::batch(), Dim::batch());
        assert_eq!(Dim::named(512, "teacher.dim"), Dim::known(512));
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let bd = Shape(vec![Dim::batch(), Dim::known(8)]);
        let d = Shape(vec![Dim::known(8)]);
        assert_eq!(bd.broadcast(&d), Some(bd.clone()));
        assert_eq!(bd.broadcast(&Shape::scalar()), Some(bd.clone()));
        assert_eq!(bd.broadcast(&Shape(vec![Dim::known(9)])), None);
    }
}
