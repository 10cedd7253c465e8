//! A minimal owned tensor: a shape and its row-major data.

/// Number of elements of a tensor of shape `shape`: `Π shape[i]` (1 for a scalar, `[]`).
#[inline]
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// An owned, contiguous, row-major tensor: element `[i0, …, i(r-1)]` is
/// `data[Σ_j i_j · Π_{l>j} shape[l]]`. Kernels take `&tensor.data` / `&mut tensor.data` and the
/// shape (or the dimensions derived from it).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    /// Dimensions, outermost first; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// `numel(shape)` elements in row-major order.
    pub data: Vec<T>,
}

impl<T: Copy> Tensor<T> {
    /// Wraps `data` as a tensor of shape `shape`. Panics if `data.len() != numel(shape)`.
    pub fn new(shape: impl Into<Vec<usize>>, data: Vec<T>) -> Self {
        let shape = shape.into();
        assert_eq!(
            data.len(),
            numel(&shape),
            "data length does not match shape {shape:?}"
        );
        Self { shape, data }
    }

    /// A tensor of shape `shape` with every element equal to `value`.
    pub fn full(shape: impl Into<Vec<usize>>, value: T) -> Self {
        let shape = shape.into();
        let data = vec![value; numel(&shape)];
        Self { shape, data }
    }

    /// A rank-0 tensor holding `value`.
    pub fn scalar(value: T) -> Self {
        Self {
            shape: Vec::new(),
            data: vec![value],
        }
    }

    /// Number of elements, `Π shape[i]`.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The same data under another shape with the same number of elements (no copy).
    pub fn reshape(mut self, shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        assert_eq!(
            numel(&shape),
            self.data.len(),
            "reshape to {shape:?} changes the element count"
        );
        self.shape = shape;
        self
    }
}

impl<T: num_traits::Zero + Copy> Tensor<T> {
    /// A tensor of shape `shape` filled with zeros.
    pub fn zeros(shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let data = vec![T::zero(); numel(&shape)];
        Self { shape, data }
    }
}
