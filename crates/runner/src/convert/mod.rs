//! PyTorch weights for genzoo, without Python: torch.save's files read ([`torch`]) and the
//! state dicts inside them found ([`state_dict`]).

pub mod state_dict;
pub mod torch;
