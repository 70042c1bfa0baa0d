//! Autoregressive models with an exact likelihood, `log p(x) = sum_i log p(x_i | x_<i)`:
//! the fully visible sigmoid belief network and AR-N ([`fvsbn`]), NADE ([`nade`]) and
//! PixelCNN ([`pixelcnn`]), and the PixelRNN Row LSTM ([`row_lstm`]) and Diagonal BiLSTM
//! ([`diagonal_bilstm`]). What they share is in [`ar`] and [`pixelrnn`].

pub mod ar;
pub mod cached;
pub mod diagonal_bilstm;
pub mod fvsbn;
pub mod nade;
pub mod output;
pub mod pixelcnn;
pub mod pixelrnn;
pub mod row_lstm;
