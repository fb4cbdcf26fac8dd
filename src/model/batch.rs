//! A padded batch as the model takes it: token ids, a 0/1 mask per row, and position ids that
//! count only real tokens, so left- and right-padded rows give the same values at real positions.

use candle_core::{Device, Result, Tensor};

/// A padded batch: token ids (B, T) u32, 0/1 attention mask per row, position ids (B, T) u32.
pub struct Batch {
    pub ids: Tensor,
    pub mask: Vec<Vec<u8>>,
    pub positions: Tensor,
}

impl Batch {
    /// Builds a batch from rows of ids and masks, with position ids from the mask
    /// (cumulative sum - 1, as transformers' `generate` does), so left and right padding both work.
    pub fn new(ids: Vec<Vec<u32>>, mask: Vec<Vec<u8>>, device: &Device) -> Result<Self> {
        let b = ids.len();
        let t = ids.first().map_or(0, |r| r.len());
        let positions: Vec<u32> = mask
            .iter()
            .flat_map(|row| {
                let mut seen = 0u32;
                row.iter()
                    .map(move |&m| {
                        seen += m as u32;
                        if m == 0 { 1 } else { seen - 1 }
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(Self {
            ids: Tensor::from_vec(ids.concat(), (b, t), device)?,
            mask,
            positions: Tensor::from_vec(positions, (b, t), device)?,
        })
    }

    /// Left-pads `rows` to a common length with `pad_id`.
    pub fn left_padded(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let ids = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(pad_id, t - r.len())
                    .chain(r.iter().copied())
                    .collect()
            })
            .collect();
        let mask = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(0u8, t - r.len())
                    .chain(std::iter::repeat_n(1u8, r.len()))
                    .collect()
            })
            .collect();
        Self::new(ids, mask, device)
    }

    /// Right-pads `rows` to a common length with `pad_id`.
    pub fn right_padded(rows: &[Vec<u32>], pad_id: u32, device: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let ids = rows
            .iter()
            .map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, t - r.len()))
                    .collect()
            })
            .collect();
        let mask = rows
            .iter()
            .map(|r| {
                std::iter::repeat_n(1u8, r.len())
                    .chain(std::iter::repeat_n(0u8, t - r.len()))
                    .collect()
            })
            .collect();
        Self::new(ids, mask, device)
    }
}
