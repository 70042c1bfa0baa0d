//! Autoregressive models with an exact likelihood: FVSBN / AR-N, NADE, PixelCNN and the
//! PixelRNN Row LSTM and Diagonal BiLSTM. None is built yet: `genzoo list` shows the status.
