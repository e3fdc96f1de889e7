//! The CUDA backend (placeholder while the CPU path lands).

/// Not yet.
pub fn new_stub(_n: usize) -> Result<super::cpu::Cpu, String> {
    Err("CUDA support is not built yet".into())
}
#[derive(Debug)]
pub struct Cuda;
impl Cuda {
    pub fn new(n: usize) -> Result<super::cpu::Cpu, String> {
        new_stub(n)
    }
}
