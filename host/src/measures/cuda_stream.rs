//! A CUDA stream of its own for each worker thread (the C++ beside this file says why).

use std::ffi::{CStr, c_char, c_int};

unsafe extern "C" {
    fn knas_use_pool_cuda_stream(device_index: c_int, slot: c_int, message: *mut c_char, capacity: usize) -> c_int;
}

#[cfg(test)]
unsafe extern "C" {
    fn knas_on_default_cuda_stream(device_index: c_int, is_default: *mut c_int, message: *mut c_char, capacity: usize) -> c_int;
}

/// Makes the pool stream of worker `slot` (the same stream every time for the same slot)
/// the calling thread's current stream on CUDA device `device_index`: every kernel the
/// thread launches there from now on goes to it. Other threads keep theirs. The error says
/// why libtorch refused (no CUDA backend, no such device).
pub fn use_own_stream(device_index: usize, slot: usize) -> Result<(), String> {
    let device = device_arg(device_index)?;
    // Slots past i32::MAX share the last stream, as slots past the pool's size already share.
    let slot = c_int::try_from(slot).unwrap_or(c_int::MAX);
    call(|message, capacity| unsafe { knas_use_pool_cuda_stream(device, slot, message, capacity) })
}

/// Whether the calling thread launches on the device's default stream.
#[cfg(test)]
fn on_default_stream(device_index: usize) -> Result<bool, String> {
    let device = device_arg(device_index)?;
    let mut is_default: c_int = 0;
    call(|message, capacity| unsafe { knas_on_default_cuda_stream(device, &mut is_default, message, capacity) })?;
    Ok(is_default != 0)
}

/// libtorch numbers devices with an `int8_t`: a larger index would silently wrap.
fn device_arg(device_index: usize) -> Result<c_int, String> {
    i8::try_from(device_index).map(c_int::from).map_err(|_| format!("CUDA device index {device_index} is out of range"))
}

/// Runs one shim function with a message buffer; its first line is the error.
fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<(), String> {
    let mut message = [0 as c_char; 512];
    // The shim writes at most `message.len()` bytes, NUL included, and catches every C++
    // exception.
    if f(message.as_mut_ptr(), message.len()) == 0 {
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
    fn a_worker_gets_a_stream_of_its_own_or_says_why_not() {
        let count = tch::Cuda::device_count() as usize;
        let err = use_own_stream(count, 0).unwrap_err();
        assert!(!err.is_empty() && !err.contains('\n'), "{err:?}");
        for index in [128, 256, usize::MAX] {
            assert!(use_own_stream(index, 0).unwrap_err().contains("out of range"), "{index}");
        }
        if count > 0 {
            // On a thread of its own: the test harness may reuse this one.
            std::thread::spawn(|| {
                assert!(on_default_stream(0).unwrap());
                use_own_stream(0, 3).unwrap();
                assert!(!on_default_stream(0).unwrap());
            })
            .join()
            .unwrap();
        }
    }
}
