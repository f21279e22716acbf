//! Cluster DNS for names that do not exist: the one answer CoreDNS gives
//! that Docker's embedded DNS cannot give on an internal network.

/// Answers every DNS query on `gateway:53` with an authoritative NXDOMAIN.
///
/// Pods find each other by looking up every ordinal's name until two in a
/// row do not exist. In a cluster, CoreDNS says so at once. Docker's
/// embedded DNS resolves the network aliases itself and, on an internal
/// network, has nowhere to forward other names to: the lookup times out
/// (2 s with `timeout:1`) instead of failing. With `--dns <gateway>` it
/// forwards them here, from the pod's own network, and gets a fast "no
/// such name".
pub async fn start_dns(gateway: &str) -> Result<tokio::task::JoinHandle<()>, String> {
    let socket = tokio::net::UdpSocket::bind((gateway, 53))
        .await
        .map_err(|e| {
            format!("cannot serve DNS on {gateway}:53 (the e2e tests run as root): {e}")
        })?;
    Ok(tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                // An ICMP error from an earlier reply: nothing to answer.
                Err(_) => continue,
            };
            if let Some(reply) = nxdomain(&buf[..n]) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    }))
}

/// The NXDOMAIN reply to a one-question DNS query, or `None` for anything
/// that is not one.
fn nxdomain(query: &[u8]) -> Option<Vec<u8>> {
    let flags = u16::from_be_bytes([*query.get(2)?, *query.get(3)?]);
    let questions = u16::from_be_bytes([*query.get(4)?, *query.get(5)?]);
    if flags & 0x8000 != 0 || questions != 1 {
        return None;
    }
    let mut pos = 12;
    loop {
        let len = *query.get(pos)? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return None;
        }
        pos += len;
    }
    let end = pos + 4;
    if end > query.len() {
        return None;
    }
    // QR, the query's opcode and RD, AA, RA, rcode 3 (NXDOMAIN).
    let reply_flags = 0x8000 | (flags & 0x7900) | 0x0400 | 0x0080 | 3;
    let mut reply = Vec::with_capacity(end);
    reply.extend_from_slice(&query[..2]);
    reply.extend_from_slice(&u16::to_be_bytes(reply_flags));
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..end]);
    Some(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_answers_no_such_name() {
        // A query for "a.b", type A, class IN, with an EDNS record after it.
        let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        query.extend_from_slice(b"\x01a\x01b\x00\x00\x01\x00\x01");
        query.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        let reply = nxdomain(&query).unwrap();
        assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
        assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
        assert_ne!(reply[2] & 0x80, 0, "a response");
        assert_ne!(reply[2] & 0x01, 0, "recursion desired is echoed");
        assert_eq!(&reply[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&reply[12..], b"\x01a\x01b\x00\x00\x01\x00\x01");
        assert!(nxdomain(&reply).is_none(), "responses are not answered");
        assert!(nxdomain(&query[..14]).is_none(), "truncated");
    }
}
