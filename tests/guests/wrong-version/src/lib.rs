//! Test fixture: a component that exports a `knas:policy/policy` interface of a future
//! contract version. The host must refuse it at load time and say which version it found.

wit_bindgen::generate!({
    inline: "
        package knas:policy@9.0.0;

        interface policy {
            propose: func() -> u32;
        }

        world search-policy {
            export policy;
        }
    ",
});

struct Future;

impl exports::knas::policy::policy::Guest for Future {
    fn propose() -> u32 {
        0
    }
}

export!(Future);
