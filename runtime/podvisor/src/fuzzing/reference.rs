//! Image references as CRI PullImage/ImageStatus/RemoveImage carry them.

use crate::image::reference::parse_digest;
use crate::image::ImageRef;

/// Parses the input; whatever parses must print as a reference that parses
/// back to the same image (the store keys images by that form).
pub fn image_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_digest(text);
    let Ok(parsed) = ImageRef::parse(text) else {
        return;
    };
    let shown = parsed.to_string();
    let again = ImageRef::parse(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parses but its normal form {shown:?} does not: {e}"));
    assert_eq!(
        again, parsed,
        "{text:?} and its normal form {shown:?} differ"
    );
    if let Some(tag) = parsed.repo_tag() {
        assert_eq!(ImageRef::parse(&tag).as_ref(), Ok(&parsed), "{tag:?}");
    }
    let _ = parsed.host();
}
