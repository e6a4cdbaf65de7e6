//! MAC address text form: six two-digit hex octets separated by colons.

/// Parses `02:ab:cd:ef:01:23` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats as lower-case `02:ab:cd:ef:01:23`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_malformed_text() {
        let mac = parse_mac("02:AB:cd:00:01:ff").unwrap();
        assert_eq!(mac, [0x02, 0xab, 0xcd, 0x00, 0x01, 0xff]);
        assert_eq!(format_mac(&mac), "02:ab:cd:00:01:ff");
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "zz:ab:cd:00:01:ff",
            "02-ab-cd-00-01-ff",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
