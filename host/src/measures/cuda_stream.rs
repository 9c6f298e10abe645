//! A CUDA stream of its own for each worker thread (the C++ beside this file says why).

use std::ffi::{c_char, c_int, CStr};

unsafe extern "C" {
    fn knas_use_pool_cuda_stream(device_index: c_int, message: *mut c_char, capacity: usize) -> c_int;
}

/// Makes one of libtorch's pool streams the calling thread's current stream on CUDA
/// device `device_index`: every kernel the thread launches there from now on goes to it.
/// Other threads keep theirs. The error says why libtorch refused (no CUDA backend, no
/// such device).
pub fn use_own_stream(device_index: usize) -> Result<(), String> {
    let index = c_int::try_from(device_index).map_err(|_| format!("CUDA device index {device_index} is out of range"))?;
    let mut message = [0 as c_char; 512];
    // SAFETY: the function writes at most `message.len()` bytes, NUL included, and catches
    // every C++ exception.
    let status = unsafe { knas_use_pool_cuda_stream(index, message.as_mut_ptr(), message.len()) };
    if status == 0 {
        return Ok(());
    }
    // SAFETY: snprintf NUL-terminated what it wrote within the buffer.
    let reason = unsafe { CStr::from_ptr(message.as_ptr()) }.to_string_lossy();
    // libtorch's messages carry a C++ backtrace after the first line.
    Err(reason.lines().next().unwrap_or("unknown reason").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_device_it_says_why_and_does_not_crash() {
        let count = tch::Cuda::device_count() as usize;
        let err = use_own_stream(count).unwrap_err();
        assert!(!err.is_empty() && !err.contains('\n'), "{err:?}");
        assert!(use_own_stream(usize::MAX).unwrap_err().contains("out of range"));
        if count > 0 {
            use_own_stream(0).unwrap();
        }
    }
}
