//! The KV cache of generation: per layer, the keys and values so far, which the generation
//! call owns (the model's forward stays pure). They are kept as views of buffers with room
//! after each row, so a decoding step writes only its own keys.

use candle_core::{Result, Tensor};

/// One layer's keys and values so far: (B, T, KVH, D) each for the CPU's f32 kernel and the
/// packed (FlashAttention) path, (B, KVH, T, D) for the composed attention. During generation
/// they are views of buffers with room along the time axis, and a step writes its keys into the
/// room instead of copying the whole cache into a new tensor, which made a long generation
/// quadratic in its length. The room doubles whenever it fills, up to what
/// [`LayerCache::reserve`] asked for.
#[derive(Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// The buffers `k` and `v` are the first time steps of; only `append` sets it, so a cache
    /// built any other way never writes into a buffer that something else still reads.
    room: Option<(Tensor, Tensor, usize)>,
    /// Time steps the cache is expected to reach (0: unknown).
    expected: usize,
}

impl LayerCache {
    /// A cache holding `k` and `v` as they are.
    pub fn new(k: Tensor, v: Tensor) -> Self {
        Self {
            k: Some(k),
            v: Some(v),
            room: None,
            expected: 0,
        }
    }

    /// Expects the cache to reach `steps` time steps in all: its room then never grows past
    /// that many, where doubling what is needed could keep up to twice the memory to the end
    /// of the generation.
    pub fn reserve(&mut self, steps: usize) {
        self.expected = steps;
    }

    pub fn k(&self) -> Option<&Tensor> {
        self.k.as_ref()
    }

    pub fn v(&self) -> Option<&Tensor> {
        self.v.as_ref()
    }

    /// Keeps (or repeats) the batch rows `idx`, and the room after them.
    pub fn select_rows(&mut self, idx: &Tensor) -> Result<()> {
        let (Some(k), Some(v)) = (&self.k, &self.v) else {
            return Ok(());
        };
        let expected = self.expected;
        *self = match &self.room {
            Some((rk, rv, axis)) => {
                let len = k.dim(*axis)?;
                let (rk, rv) = (rk.index_select(idx, 0)?, rv.index_select(idx, 0)?);
                Self {
                    k: Some(rk.narrow(*axis, 0, len)?),
                    v: Some(rv.narrow(*axis, 0, len)?),
                    room: Some((rk, rv, *axis)),
                    expected,
                }
            }
            None => Self::new(k.index_select(idx, 0)?, v.index_select(idx, 0)?),
        };
        self.expected = expected;
        Ok(())
    }

    /// Extends the cache by `k` and `v` along `axis` and returns all keys and values so far.
    /// With `in_room`, they are written into the buffers' room (the result is then a view that
    /// is not contiguous across the batch); otherwise concatenated.
    pub(super) fn append(
        &mut self,
        k: Tensor,
        v: Tensor,
        axis: usize,
        in_room: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (self.k.take(), self.v.take()) {
            (Some(pk), Some(pv)) if in_room => {
                let (len, t) = (pk.dim(axis)?, k.dim(axis)?);
                let (rk, rv) = match self.room.take() {
                    Some((rk, rv, a)) if a == axis && rk.dim(axis)? >= len + t => (rk, rv),
                    _ => {
                        // Twice what is needed, so that the copies below happen a logarithmic
                        // number of times over a generation, but never past what was reserved.
                        let room = if self.expected >= len + t {
                            self.expected.min(2 * (len + t))
                        } else {
                            2 * (len + t)
                        };
                        let grow = |p: &Tensor| -> Result<Tensor> {
                            let mut dims = p.dims().to_vec();
                            dims[axis] = room;
                            let buf = Tensor::zeros(dims, p.dtype(), p.device())?;
                            buf.slice_set(&p.contiguous()?, axis, 0)?;
                            Ok(buf)
                        };
                        (grow(&pk)?, grow(&pv)?)
                    }
                };
                rk.slice_set(&k.contiguous()?, axis, len)?;
                rv.slice_set(&v.contiguous()?, axis, len)?;
                let out = (rk.narrow(axis, 0, len + t)?, rv.narrow(axis, 0, len + t)?);
                self.room = Some((rk, rv, axis));
                out
            }
            (Some(pk), Some(pv)) => (
                Tensor::cat(&[&pk, &k], axis)?.contiguous()?,
                Tensor::cat(&[&pv, &v], axis)?.contiguous()?,
            ),
            _ => (k.contiguous()?, v.contiguous()?),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn room_grows_no_further_than_reserved_and_is_kept_through_row_selection() {
        let dev = Device::Cpu;
        // One step of keys and values for `rows` rows.
        let append = |cache: &mut LayerCache, rows: usize, t: usize| {
            let step = || Tensor::randn(0f32, 1.0, (rows, t, 2, 4), &dev).unwrap();
            cache.append(step(), step(), 1, true).unwrap();
        };
        let room = |c: &LayerCache| c.room.as_ref().map(|(k, _, _)| k.dim(1).unwrap());
        let mut cache = LayerCache::default();
        append(&mut cache, 3, 5);
        cache.reserve(9);
        // 12 would be twice what is needed; 9 were reserved.
        append(&mut cache, 3, 1);
        assert_eq!(room(&cache), Some(9));
        cache
            .select_rows(&Tensor::new(&[2u32, 0], &dev).unwrap())
            .unwrap();
        for _ in 0..3 {
            append(&mut cache, 2, 1);
        }
        assert_eq!(room(&cache), Some(9));
        assert_eq!(cache.k().unwrap().dims(), [2, 9, 2, 4]);
        // Past what was reserved, the room doubles.
        append(&mut cache, 2, 1);
        assert_eq!(room(&cache), Some(20));
    }

    #[test]
    fn appending_in_room_keeps_what_concatenation_keeps() {
        // A prefill of 5 steps, then steps of 1 and 3 past several regrowths of the room.
        let dev = Device::Cpu;
        let step = |t: usize, x: f32| Tensor::randn(x, 1.0, (2, t, 3, 4), &dev).unwrap();
        let (mut roomy, mut plain) = (LayerCache::default(), LayerCache::default());
        for (i, t) in [5, 1, 1, 3, 1, 1, 1, 3, 3, 1, 1, 3].into_iter().enumerate() {
            let (k, v) = (step(t, i as f32), step(t, -(i as f32)));
            let (rk, rv) = roomy.append(k.clone(), v.clone(), 1, true).unwrap();
            let (pk, pv) = plain.append(k, v, 1, false).unwrap();
            assert!(pk.is_contiguous());
            for (a, b) in [(&rk, &pk), (&rv, &pv)] {
                assert_eq!(a.dims(), b.dims());
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "after append {i}");
            }
        }
        // The room outgrew the first buffer and the views kept the first steps.
        assert_eq!(roomy.k().unwrap().dim(1).unwrap(), 24);
        assert!(!roomy.k().unwrap().is_contiguous());
        // Dropping a row keeps the room; the next step appends into it.
        let idx = Tensor::new(&[1u32], &dev).unwrap();
        roomy.select_rows(&idx).unwrap();
        plain.select_rows(&idx).unwrap();
        let (k, v) = (step(1, 7.0), step(1, 8.0));
        let (k, v) = (k.narrow(0, 0, 1).unwrap(), v.narrow(0, 0, 1).unwrap());
        let (rk, rv) = roomy.append(k.clone(), v.clone(), 1, true).unwrap();
        let (pk, pv) = plain.append(k, v, 1, false).unwrap();
        assert_eq!(rk.dims(), &[1, 25, 3, 4]);
        for (a, b) in [(&rk, &pk), (&rv, &pv)] {
            let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "after dropping a row");
        }
    }
}
