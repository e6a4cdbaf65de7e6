/* Freestanding test guest for podvisor-vmm.
 *
 * Entered through the 64-bit Linux boot protocol with RSI = boot_params.
 * It reads its command line, runs the checks named in "tests=a,b,...",
 * reports on COM1 and resets the machine through the i8042 ("DONE").
 * Devices are found from the virtio_mmio.device= entries the VMM put on
 * the command line and driven by polling: no interrupts. */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define barrier() asm volatile("" ::: "memory")
#define mb() asm volatile("mfence" ::: "memory")

static inline void outb(u16 port, u8 v) { asm volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; asm volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u64 rdtsc(void) { u32 lo, hi; asm volatile("rdtsc" : "=a"(lo), "=d"(hi)); return ((u64)hi << 32) | lo; }
static inline void cpu_relax(void) { asm volatile("pause"); }
static inline u32 rd32(u64 a) { return *(volatile u32 *)a; }
static inline void wr32(u64 a, u32 v) { *(volatile u32 *)a = v; }
static inline u8 rd8(u64 a) { return *(volatile u8 *)a; }

/* Roughly 10 s at 2-3 GHz: bounded waits so a broken device fails the test, not hangs it. */
#define TIMEOUT_CYCLES 20000000000UL

static void *memset(void *d, int c, u64 n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
static void *memcpy(void *d, const void *s, u64 n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }
static int memeq(const void *a, const void *b, u64 n) { const u8 *p = a, *q = b; while (n--) if (*p++ != *q++) return 0; return 1; }
static u64 strlen(const char *s) { u64 n = 0; while (s[n]) n++; return n; }

/* ---- serial output ---- */
static void putc(char c) { outb(0x3f8, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void put_hex(u64 v) {
    char buf[19]; int i = 18; buf[i] = 0;
    do { buf[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v && i > 2);
    buf[--i] = 'x'; buf[--i] = '0'; puts(&buf[i]);
}
static void put_dec(u64 v) {
    char buf[21]; int i = 20; buf[i] = 0;
    do { buf[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    puts(&buf[i]);
}
static void put_bytes(const u8 *p, u64 n) {
    for (u64 i = 0; i < n; i++) { putc("0123456789abcdef"[p[i] >> 4]); putc("0123456789abcdef"[p[i] & 15]); }
}

static int failures;
static void fail(const char *test, const char *why) { puts("FAIL "); puts(test); puts(": "); puts(why); puts("\n"); failures++; }
static void pass(const char *test) { puts("PASS "); puts(test); puts("\n"); }

/* ---- command line ---- */
static const char *cmdline;

/* Value of "key=" (up to the next space), or 0. */
static const char *param(const char *key) {
    u64 kl = strlen(key);
    const char *p = cmdline;
    while (*p) {
        while (*p == ' ') p++;
        if (memeq(p, key, kl) && p[kl] == '=') return p + kl + 1;
        while (*p && *p != ' ') p++;
    }
    return 0;
}

static int selected(const char *name) {
    const char *t = param("tests");
    u64 nl = strlen(name);
    while (t && *t && *t != ' ') {
        if (memeq(t, name, nl) && (t[nl] == ',' || t[nl] == ' ' || t[nl] == 0)) return 1;
        while (*t && *t != ',' && *t != ' ') t++;
        if (*t == ',') t++;
    }
    return 0;
}

static u64 parse_num(const char *p) {
    u64 v = 0;
    if (p[0] == '0' && p[1] == 'x') {
        p += 2;
        for (;; p++) {
            if (*p >= '0' && *p <= '9') v = v * 16 + (u64)(*p - '0');
            else if (*p >= 'a' && *p <= 'f') v = v * 16 + (u64)(*p - 'a' + 10);
            else break;
        }
        return v;
    }
    while (*p >= '0' && *p <= '9') v = v * 10 + (u64)(*p++ - '0');
    return v;
}

/* ---- boot_params (zero page) offsets ---- */
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR_BOOT_FLAG 0x1fe
#define BP_HDR_HEADER 0x202
#define BP_HDR_LOADER 0x210
#define BP_HDR_RAMDISK_IMAGE 0x218
#define BP_HDR_RAMDISK_SIZE 0x21c
#define BP_HDR_CMDLINE_PTR 0x228
#define BP_HDR_CMDLINE_SIZE 0x238
#define BP_E820_TABLE 0x2d0

static u32 fnv1a(const u8 *p, u64 n) {
    u32 h = 2166136261u;
    while (n--) { h ^= *p++; h *= 16777619u; }
    return h;
}

static void test_zeropage(const u8 *bp) {
    puts("ZP loader="); put_hex(bp[BP_HDR_LOADER]);
    puts(" boot_flag="); put_hex(*(const u16 *)(bp + BP_HDR_BOOT_FLAG));
    puts(" header="); put_hex(*(const u32 *)(bp + BP_HDR_HEADER));
    puts(" cmdline_size="); put_dec(*(const u32 *)(bp + BP_HDR_CMDLINE_SIZE));
    puts("\n");
    u8 n = bp[BP_E820_ENTRIES];
    puts("ZP e820 n="); put_dec(n); puts("\n");
    for (u8 i = 0; i < n; i++) {
        const u8 *e = bp + BP_E820_TABLE + 20 * i;
        puts("ZP e820 "); put_hex(*(const u64 *)e); puts(" "); put_hex(*(const u64 *)(e + 8));
        puts(" "); put_dec(*(const u32 *)(e + 16)); puts("\n");
    }
    u64 addr = *(const u32 *)(bp + BP_HDR_RAMDISK_IMAGE);
    u64 size = *(const u32 *)(bp + BP_HDR_RAMDISK_SIZE);
    puts("ZP initrd addr="); put_hex(addr); puts(" size="); put_dec(size);
    puts(" fnv="); put_hex(size ? fnv1a((const u8 *)addr, size) : 0); puts("\n");
    puts("ZP cmdline="); puts(cmdline); puts("\n");
    pass("zeropage");
}

/* ---- virtio-mmio, polled ---- */
#define VQ_SIZE 16
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vring_avail { u16 flags; u16 idx; u16 ring[VQ_SIZE]; u16 used_event; };
struct vring_used_elem { u32 id; u32 len; };
struct vring_used { u16 flags; u16 idx; struct vring_used_elem ring[VQ_SIZE]; u16 avail_event; };

struct vq {
    u64 base;
    u32 index;
    volatile struct vring_desc *desc;
    volatile struct vring_avail *avail;
    volatile struct vring_used *used;
    u16 last_used;
};

/* One page per queue: descriptors at 0, avail ring at 256, used ring at 512. */
static u8 queue_pages[12][4096] __attribute__((aligned(4096)));
static int queue_pages_used;

#define ST_ACK 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8

static u64 devices[16];
static u32 device_ids[16];
static int device_count;

static void find_devices(void) {
    const char *p = cmdline;
    const char *key = "virtio_mmio.device=";
    u64 kl = strlen(key);
    while (*p) {
        while (*p == ' ') p++;
        if (memeq(p, key, kl)) {
            const char *at = p + kl;
            while (*at && *at != '@' && *at != ' ') at++;
            if (*at == '@' && device_count < 16) {
                u64 base = parse_num(at + 1);
                devices[device_count] = base;
                device_ids[device_count] = rd32(base + 0x08);
                device_count++;
            }
        }
        while (*p && *p != ' ') p++;
    }
}

/* n-th device with this id, or 0. */
static u64 find_device(u32 id, int nth) {
    for (int i = 0; i < device_count; i++)
        if (device_ids[i] == id && nth-- == 0) return devices[i];
    return 0;
}

/* Resets, negotiates `wanted` (VERSION_1 always), sets up `nq` queues. Returns
 * the negotiated feature bits, or 0 on failure. */
static u64 virtio_setup(const char *test, u64 base, u64 wanted, int nq, struct vq *vqs) {
    if (rd32(base) != 0x74726976) { fail(test, "bad magic"); return 0; }
    if (rd32(base + 0x04) != 2) { fail(test, "not virtio-mmio v2"); return 0; }
    wr32(base + 0x70, 0);
    wr32(base + 0x70, ST_ACK);
    wr32(base + 0x70, ST_ACK | ST_DRIVER);
    wr32(base + 0x14, 0);
    u64 features = rd32(base + 0x10);
    wr32(base + 0x14, 1);
    features |= (u64)rd32(base + 0x10) << 32;
    wanted |= 1UL << 32;
    u64 neg = features & wanted;
    if (!(neg & (1UL << 32))) { fail(test, "device lacks VERSION_1"); return 0; }
    wr32(base + 0x24, 0); wr32(base + 0x20, (u32)neg);
    wr32(base + 0x24, 1); wr32(base + 0x20, (u32)(neg >> 32));
    wr32(base + 0x70, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
    if (!(rd32(base + 0x70) & ST_FEATURES_OK)) { fail(test, "FEATURES_OK refused"); return 0; }
    for (int q = 0; q < nq; q++) {
        wr32(base + 0x30, (u32)q);
        u32 max = rd32(base + 0x34);
        if (max < VQ_SIZE) { fail(test, "queue too small"); return 0; }
        if (queue_pages_used >= 12) { fail(test, "out of queue pages"); return 0; }
        u8 *page = queue_pages[queue_pages_used++];
        memset(page, 0, 4096);
        struct vq *v = &vqs[q];
        v->base = base; v->index = (u32)q; v->last_used = 0;
        v->desc = (volatile struct vring_desc *)page;
        v->avail = (volatile struct vring_avail *)(page + 256);
        v->used = (volatile struct vring_used *)(page + 512);
        wr32(base + 0x38, VQ_SIZE);
        wr32(base + 0x80, (u32)(u64)v->desc); wr32(base + 0x84, 0);
        wr32(base + 0x90, (u32)(u64)v->avail); wr32(base + 0x94, 0);
        wr32(base + 0xa0, (u32)(u64)v->used); wr32(base + 0xa4, 0);
        wr32(base + 0x44, 1);
    }
    wr32(base + 0x70, ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    return neg;
}

static void vq_set(struct vq *v, u16 i, u64 addr, u32 len, u16 flags, u16 next) {
    v->desc[i].addr = addr; v->desc[i].len = len; v->desc[i].flags = flags; v->desc[i].next = next;
}

static void vq_publish(struct vq *v, u16 head) {
    v->avail->ring[v->avail->idx % VQ_SIZE] = head;
    mb();
    v->avail->idx = (u16)(v->avail->idx + 1);
    mb();
}

static void vq_kick(struct vq *v) { wr32(v->base + 0x50, v->index); }

/* Waits for the next used element; returns 1 and fills id/len, 0 on timeout. */
static int vq_wait(struct vq *v, u32 *id, u32 *len) {
    u64 start = rdtsc();
    while (v->used->idx == v->last_used) {
        if (rdtsc() - start > TIMEOUT_CYCLES) return 0;
        cpu_relax();
    }
    mb();
    volatile struct vring_used_elem *e = &v->used->ring[v->last_used % VQ_SIZE];
    *id = e->id; *len = e->len;
    v->last_used++;
    return 1;
}

static int vq_poll(struct vq *v, u32 *id, u32 *len) {
    if (v->used->idx == v->last_used) return 0;
    mb();
    volatile struct vring_used_elem *e = &v->used->ring[v->last_used % VQ_SIZE];
    *id = e->id; *len = e->len;
    v->last_used++;
    return 1;
}

/* ---- rng ---- */
static u8 rng_buf[64];

static void test_rng(void) {
    u64 base = find_device(4, 0);
    if (!base) { fail("rng", "no rng device"); return; }
    struct vq vq;
    if (!virtio_setup("rng", base, 0, 1, &vq)) return;
    memset(rng_buf, 0, sizeof rng_buf);
    vq_set(&vq, 0, (u64)rng_buf, sizeof rng_buf, VRING_DESC_F_WRITE, 0);
    vq_publish(&vq, 0); vq_kick(&vq);
    u32 id, len;
    if (!vq_wait(&vq, &id, &len)) { fail("rng", "timeout"); return; }
    int nonzero = 0;
    for (u64 i = 0; i < sizeof rng_buf; i++) nonzero |= rng_buf[i];
    puts("RNG len="); put_dec(len); puts(" bytes="); put_bytes(rng_buf, 16); puts("\n");
    if (len != sizeof rng_buf || !nonzero) { fail("rng", "short or zero read"); return; }
    pass("rng");
}

/* ---- block ---- */
struct blk_req { u32 type; u32 reserved; u64 sector; };
static struct blk_req blk_hdr;
static u8 blk_data[512];
static u8 blk_status;

/* One request: type 0 read, 1 write, 4 flush. Returns the status byte or -1 on timeout. */
static int blk_rw(struct vq *vq, u32 type, u64 sector) {
    blk_hdr.type = type; blk_hdr.reserved = 0; blk_hdr.sector = sector;
    blk_status = 0xff;
    vq_set(vq, 0, (u64)&blk_hdr, sizeof blk_hdr, VRING_DESC_F_NEXT, 1);
    if (type == 4) {
        vq_set(vq, 1, (u64)&blk_status, 1, VRING_DESC_F_WRITE, 0);
    } else {
        vq_set(vq, 1, (u64)blk_data, 512, (u16)(VRING_DESC_F_NEXT | (type == 0 ? VRING_DESC_F_WRITE : 0)), 2);
        vq_set(vq, 2, (u64)&blk_status, 1, VRING_DESC_F_WRITE, 0);
    }
    vq_publish(vq, 0); vq_kick(vq);
    u32 id, len;
    if (!vq_wait(vq, &id, &len)) return -1;
    return blk_status;
}

static void test_blk(void) {
    u64 base = find_device(2, 0);
    if (!base) { fail("blk", "no block device"); return; }
    struct vq vq;
    u64 neg = virtio_setup("blk", base, (1UL << 5) | (1UL << 9), 1, &vq);
    if (!neg) return;
    u64 capacity = *(volatile u64 *)(base + 0x100);
    const char *s = param("blk_sector");
    u64 sector = s ? parse_num(s) : 1;
    int st = blk_rw(&vq, 0, sector);
    puts("BLK capacity="); put_dec(capacity); puts(" ro="); put_dec((neg >> 5) & 1);
    puts(" read_status="); put_dec((u64)(st & 0xff)); puts(" data=");
    for (int i = 0; i < 32 && blk_data[i] >= 32 && blk_data[i] < 127; i++) putc((char)blk_data[i]);
    puts("\n");
    if (st != 0) { fail("blk", "read failed"); return; }
    /* Write a pattern to sector+1, read it back, flush. */
    for (int i = 0; i < 512; i++) blk_data[i] = (u8)('a' + i % 26);
    int wst = blk_rw(&vq, 1, sector + 1);
    memset(blk_data, 0, 512);
    int rst = blk_rw(&vq, 0, sector + 1);
    int fst = blk_rw(&vq, 4, 0);
    int beyond = blk_rw(&vq, 0, capacity);
    puts("BLK write_status="); put_dec((u64)(wst & 0xff)); puts(" readback_status="); put_dec((u64)(rst & 0xff));
    puts(" flush_status="); put_dec((u64)(fst & 0xff)); puts(" beyond_end_status="); put_dec((u64)(beyond & 0xff));
    puts(" readback="); for (int i = 0; i < 26; i++) putc((char)blk_data[i]); puts("\n");
    if (wst != 0 || rst != 0 || fst != 0 || blk_data[0] != 'a' || blk_data[25] != 'z') { fail("blk", "write/readback/flush"); return; }
    if (beyond == 0) { fail("blk", "read past the end succeeded"); return; }
    pass("blk");

    /* The second block device is read-only: RO offered, writes refused. */
    u64 ro_base = find_device(2, 1);
    if (!ro_base) return;
    struct vq rvq;
    u64 rneg = virtio_setup("blk-ro", ro_base, (1UL << 5) | (1UL << 9), 1, &rvq);
    if (!rneg) return;
    int r0 = blk_rw(&rvq, 0, 0);
    int w0 = blk_rw(&rvq, 1, 0);
    puts("BLKRO ro="); put_dec((rneg >> 5) & 1); puts(" read_status="); put_dec((u64)(r0 & 0xff));
    puts(" write_status="); put_dec((u64)(w0 & 0xff)); puts("\n");
    if (!((rneg >> 5) & 1) || r0 != 0 || w0 == 0) { fail("blk-ro", "read-only not enforced"); return; }
    pass("blk-ro");
}

/* ---- vsock ---- */
struct vsock_hdr {
    u64 src_cid; u64 dst_cid; u32 src_port; u32 dst_port; u32 len;
    u16 type; u16 op; u32 flags; u32 buf_alloc; u32 fwd_cnt;
} __attribute__((packed));

#define VSOCK_OP_REQUEST 1
#define VSOCK_OP_RESPONSE 2
#define VSOCK_OP_RST 3
#define VSOCK_OP_SHUTDOWN 4
#define VSOCK_OP_RW 5
#define VSOCK_OP_CREDIT_UPDATE 6
#define VSOCK_OP_CREDIT_REQUEST 7
#define VSOCK_RX_BUFS 4
#define VSOCK_BUF 4096

static u8 vsock_rx[VSOCK_RX_BUFS][VSOCK_BUF];
static u8 vsock_tx[VSOCK_BUF];
static struct vq vs_q[3];
static u64 guest_cid;
static u32 vs_fwd[2];

static void vsock_post_rx(u16 i) {
    vq_set(&vs_q[0], i, (u64)vsock_rx[i], VSOCK_BUF, VRING_DESC_F_WRITE, 0);
    vq_publish(&vs_q[0], i);
}

static int vsock_send(u32 op, u32 src_port, u64 dst_cid, u32 dst_port, const void *data, u32 len, u32 fwd) {
    struct vsock_hdr *h = (struct vsock_hdr *)vsock_tx;
    memset(h, 0, sizeof *h);
    h->src_cid = guest_cid; h->dst_cid = dst_cid; h->src_port = src_port; h->dst_port = dst_port;
    h->len = len; h->type = 1; h->op = (u16)op; h->buf_alloc = 65536; h->fwd_cnt = fwd;
    if (len) memcpy(vsock_tx + sizeof *h, data, len);
    vq_set(&vs_q[1], 0, (u64)vsock_tx, (u32)(sizeof *h + len), 0, 0);
    vq_publish(&vs_q[1], 0); vq_kick(&vs_q[1]);
    u32 id, l;
    return vq_wait(&vs_q[1], &id, &l);
}

/* Waits for a packet with the given op to our port; copies it out. Other packets are dropped. */
static int vsock_recv(u32 op, u32 port, struct vsock_hdr *out, u8 *data, u32 cap) {
    u64 start = rdtsc();
    for (;;) {
        u32 id, len;
        if (vq_poll(&vs_q[0], &id, &len)) {
            struct vsock_hdr *h = (struct vsock_hdr *)vsock_rx[id];
            int match = h->op == op && h->dst_port == port;
            if (match) {
                memcpy(out, h, sizeof *h);
                u32 n = h->len < cap ? h->len : cap;
                if (data && n) memcpy(data, vsock_rx[id] + sizeof *h, n);
            } else if (h->op == VSOCK_OP_RST && h->dst_port == port) {
                vsock_post_rx((u16)id); vq_kick(&vs_q[0]);
                return -1;
            }
            vsock_post_rx((u16)id); vq_kick(&vs_q[0]);
            if (match) return 1;
        }
        if (rdtsc() - start > TIMEOUT_CYCLES) return 0;
        cpu_relax();
    }
}

static void test_vsock(void) {
    u64 base = find_device(19, 0);
    if (!base) { fail("vsock", "no vsock device"); return; }
    if (!virtio_setup("vsock", base, 0, 3, vs_q)) return;
    guest_cid = *(volatile u64 *)(base + 0x100);
    puts("VSOCK cid="); put_dec(guest_cid); puts("\n");
    for (u16 i = 0; i < VSOCK_RX_BUFS; i++) vsock_post_rx(i);
    vq_kick(&vs_q[0]);

    /* Host-initiated: the host wrote "CONNECT 1234" on the unix socket. */
    struct vsock_hdr h;
    u8 data[256];
    int r = vsock_recv(VSOCK_OP_REQUEST, 1234, &h, 0, 0);
    if (r != 1) { fail("vsock-host", "no connection request"); return; }
    u32 host_port = h.src_port;
    vsock_send(VSOCK_OP_RESPONSE, 1234, 2, host_port, 0, 0, 0);
    memset(data, 0, sizeof data);
    r = vsock_recv(VSOCK_OP_RW, 1234, &h, data, sizeof data - 1);
    if (r != 1) { fail("vsock-host", "no data"); return; }
    vs_fwd[0] += h.len;
    puts("VSOCK host says: "); puts((const char *)data); puts("\n");
    u8 reply[300];
    memcpy(reply, "pong:", 5);
    memcpy(reply + 5, data, h.len);
    vsock_send(VSOCK_OP_RW, 1234, 2, host_port, reply, 5 + h.len, vs_fwd[0]);
    pass("vsock-host");

    /* Guest-initiated: host port 5678 is served at <socket>_5678. */
    vsock_send(VSOCK_OP_REQUEST, 5000, 2, 5678, 0, 0, 0);
    r = vsock_recv(VSOCK_OP_RESPONSE, 5000, &h, 0, 0);
    if (r != 1) { fail("vsock-guest", r < 0 ? "connection reset" : "no response"); return; }
    const char *msg = "hello-from-guest";
    vsock_send(VSOCK_OP_RW, 5000, 2, 5678, msg, (u32)strlen(msg), 0);
    memset(data, 0, sizeof data);
    r = vsock_recv(VSOCK_OP_RW, 5000, &h, data, sizeof data - 1);
    if (r != 1) { fail("vsock-guest", "no reply"); return; }
    puts("VSOCK host replied: "); puts((const char *)data); puts("\n");
    vsock_send(VSOCK_OP_SHUTDOWN, 5000, 2, 5678, 0, 0, h.len);
    pass("vsock-guest");
}

/* Benchmark peer: accepts host connections on port 1234 and echoes every byte back, forever. */
static u8 echo_buf[VSOCK_BUF];

static void vsock_echo(void) {
    u64 base = find_device(19, 0);
    if (!base) { fail("vsock-echo", "no vsock device"); return; }
    if (!virtio_setup("vsock-echo", base, 0, 3, vs_q)) return;
    guest_cid = *(volatile u64 *)(base + 0x100);
    for (u16 i = 0; i < VSOCK_RX_BUFS; i++) vsock_post_rx(i);
    vq_kick(&vs_q[0]);
    puts("ECHO ready\n");
    u32 fwd = 0;
    for (;;) {
        u32 id, len;
        if (!vq_poll(&vs_q[0], &id, &len)) { cpu_relax(); continue; }
        struct vsock_hdr h;
        memcpy(&h, vsock_rx[id], sizeof h);
        u32 n = h.len <= VSOCK_BUF - sizeof h ? h.len : 0;
        if (h.op == VSOCK_OP_RW && n) memcpy(echo_buf, vsock_rx[id] + sizeof h, n);
        vsock_post_rx((u16)id); vq_kick(&vs_q[0]);
        if (h.dst_port != 1234) continue;
        if (h.op == VSOCK_OP_REQUEST) { fwd = 0; vsock_send(VSOCK_OP_RESPONSE, 1234, 2, h.src_port, 0, 0, 0); }
        else if (h.op == VSOCK_OP_RW) { fwd += n; vsock_send(VSOCK_OP_RW, 1234, 2, h.src_port, echo_buf, n, fwd); }
        else if (h.op == VSOCK_OP_CREDIT_REQUEST) vsock_send(VSOCK_OP_CREDIT_UPDATE, 1234, 2, h.src_port, 0, 0, fwd);
        else if (h.op == VSOCK_OP_SHUTDOWN) vsock_send(VSOCK_OP_RST, 1234, 2, h.src_port, 0, 0, fwd);
    }
}

/* ---- net ---- */
#define NET_HDR 12
#define NET_RX_BUFS 4
static u8 net_rx[NET_RX_BUFS][2048];
static u8 net_tx[2048];
static struct vq net_q[2];

static void test_net(void) {
    u64 base = find_device(1, 0);
    if (!base) { fail("net", "no net device"); return; }
    u64 neg = virtio_setup("net", base, 1UL << 5, 2, net_q);
    if (!neg) return;
    u8 mac[6];
    for (int i = 0; i < 6; i++) mac[i] = rd8(base + 0x100 + (u64)i);
    puts("NET mac="); put_bytes(mac, 6); puts("\n");
    for (u16 i = 0; i < NET_RX_BUFS; i++) {
        vq_set(&net_q[0], i, (u64)net_rx[i], sizeof net_rx[i], VRING_DESC_F_WRITE, 0);
        vq_publish(&net_q[0], i);
    }
    vq_kick(&net_q[0]);
    const char *payload = "podvisor guest->host";
    memset(net_tx, 0, NET_HDR);
    u8 *f = net_tx + NET_HDR;
    memset(f, 0xff, 6);
    memcpy(f + 6, mac, 6);
    f[12] = 0x88; f[13] = 0xb5;
    memcpy(f + 14, payload, strlen(payload));
    u32 flen = 14 + (u32)strlen(payload);
    if (flen < 60) { memset(f + flen, 0, 60 - flen); flen = 60; }
    vq_set(&net_q[1], 0, (u64)net_tx, NET_HDR + flen, 0, 0);
    vq_publish(&net_q[1], 0); vq_kick(&net_q[1]);
    u32 id, len;
    if (!vq_wait(&net_q[1], &id, &len)) { fail("net", "tx timeout"); return; }
    puts("NET sent\n");
    u64 start = rdtsc();
    for (;;) {
        if (vq_poll(&net_q[0], &id, &len)) {
            u8 *rf = net_rx[id] + NET_HDR;
            if (len > NET_HDR + 14 && rf[12] == 0x88 && rf[13] == 0xb5 && memeq(rf, mac, 6)) {
                puts("NET received: ");
                for (u32 i = 14; i < len - NET_HDR && rf[i]; i++) putc((char)rf[i]);
                puts("\n");
                pass("net");
                return;
            }
            vq_publish(&net_q[0], (u16)id); vq_kick(&net_q[0]);
        }
        if (rdtsc() - start > TIMEOUT_CYCLES) { fail("net", "rx timeout"); return; }
        cpu_relax();
    }
}

/* ---- virtio-fs: FUSE requests answered by the vhost-user backend ---- */
struct fuse_in_header { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid; u32 pid; u16 extlen; u16 pad; };
struct fuse_out_header { u32 len; int error; u64 unique; };
static u8 fs_in[512] __attribute__((aligned(16)));
static u8 fs_out[512] __attribute__((aligned(16)));
static struct vq fs_q[2];
static u64 fs_unique;

/* Sends one FUSE request (header + `arg`) on the request queue; returns the reply length or -1. */
static int fuse_call(u32 opcode, u64 nodeid, const void *arg, u32 arglen, u32 outlen) {
    struct fuse_in_header *h = (struct fuse_in_header *)fs_in;
    memset(h, 0, sizeof *h);
    h->len = (u32)sizeof *h + arglen; h->opcode = opcode; h->unique = ++fs_unique; h->nodeid = nodeid;
    memcpy(fs_in + sizeof *h, arg, arglen);
    memset(fs_out, 0, sizeof fs_out);
    vq_set(&fs_q[1], 0, (u64)fs_in, h->len, VRING_DESC_F_NEXT, 1);
    vq_set(&fs_q[1], 1, (u64)fs_out, outlen, VRING_DESC_F_WRITE, 0);
    vq_publish(&fs_q[1], 0); vq_kick(&fs_q[1]);
    u32 id, len;
    if (!vq_wait(&fs_q[1], &id, &len)) return -1;
    return (int)len;
}

static void test_fs(void) {
    u64 base = find_device(26, 0);
    if (!base) { fail("fs", "no virtio-fs device"); return; }
    if (!virtio_setup("fs", base, 0, 2, fs_q)) return;
    char tag[37];
    for (int i = 0; i < 36; i++) tag[i] = (char)rd8(base + 0x100 + (u64)i);
    tag[36] = 0;
    puts("FS tag="); puts(tag); puts("\n");
    u32 init_in[4] = { 7, 31, 65536, 0 };
    int n = fuse_call(26, 0, init_in, sizeof init_in, 16 + 64);
    struct fuse_out_header *o = (struct fuse_out_header *)fs_out;
    if (n < 16 || o->error) { fail("fs", "FUSE_INIT failed"); return; }
    puts("FS init major="); put_dec(*(u32 *)(fs_out + 16)); puts(" minor="); put_dec(*(u32 *)(fs_out + 20)); puts("\n");
    const char *name = param("fs_file");
    char fname[64]; u32 fl = 0;
    while (name && name[fl] && name[fl] != ' ' && fl < 63) { fname[fl] = name[fl]; fl++; }
    fname[fl++] = 0;
    n = fuse_call(1, 1, fname, fl, 16 + 128);
    if (n < 16 || o->error) { fail("fs", "FUSE_LOOKUP failed"); return; }
    u64 nodeid = *(u64 *)(fs_out + 16);
    u64 size = *(u64 *)(fs_out + 16 + 40 + 8);
    u32 open_in[2] = { 0, 0 };
    n = fuse_call(14, nodeid, open_in, sizeof open_in, 16 + 16);
    if (n < 16 || o->error) { fail("fs", "FUSE_OPEN failed"); return; }
    u64 fh = *(u64 *)(fs_out + 16);
    u64 read_in[5] = { fh, 0, 128, 0, 0 };
    n = fuse_call(15, nodeid, read_in, sizeof read_in, 16 + 128);
    if (n < 16 || o->error) { fail("fs", "FUSE_READ failed"); return; }
    puts("FS file size="); put_dec(size); puts(" read="); put_dec(o->len - 16); puts(" data=");
    for (u32 i = 16; i < o->len && i < 16 + 128; i++) putc((char)fs_out[i]);
    puts("\n");
    pass("fs");
}

/* ---- SMP: start the AP with INIT/SIPI through the LAPIC ---- */
extern u8 trampoline_start[], trampoline_end[], trampoline_target[], trampoline_stack[];
extern u8 trampoline_jmp_off_sym[], trampoline_stub64_sym[];
static volatile u32 ap_started;
static volatile u32 ap_apic_id;
static u8 ap_stack[16384] __attribute__((aligned(16)));

void ap_entry64(void) {
    u32 ebx;
    asm volatile("cpuid" : "=b"(ebx) : "a"(1) : "ecx", "edx");
    ap_apic_id = ebx >> 24;
    mb();
    ap_started = 1;
    for (;;) asm volatile("cli; hlt");
}

#define LAPIC 0xfee00000UL
static void lapic_icr(u32 dest, u32 low) {
    wr32(LAPIC + 0x310, dest << 24);
    wr32(LAPIC + 0x300, low);
    while (rd32(LAPIC + 0x300) & (1 << 12)) cpu_relax();
}

static void test_smp(void) {
    u8 *tramp = (u8 *)0x10000;
    u64 size = (u64)(trampoline_end - trampoline_start);
    memcpy(tramp, trampoline_start, size);
    *(u32 *)(tramp + (u64)trampoline_jmp_off_sym) = 0x10000 + (u32)(u64)trampoline_stub64_sym;
    *(u64 *)(tramp + (trampoline_target - trampoline_start)) = (u64)ap_entry64;
    *(u64 *)(tramp + (trampoline_stack - trampoline_start)) = (u64)(ap_stack + sizeof ap_stack);
    mb();
    u32 bsp_ebx;
    asm volatile("cpuid" : "=b"(bsp_ebx) : "a"(1) : "ecx", "edx");
    puts("SMP bsp_apic_id="); put_dec(bsp_ebx >> 24); puts(" logical_cpus="); put_dec((bsp_ebx >> 16) & 0xff); puts("\n");
    lapic_icr(1, 0x4500);             /* INIT */
    lapic_icr(1, 0x4600 | 0x10);      /* SIPI, vector 0x10 -> 0x10000 */
    u64 start = rdtsc();
    while (!ap_started) {
        if (rdtsc() - start > TIMEOUT_CYCLES / 10) {
            lapic_icr(1, 0x4600 | 0x10);   /* second SIPI, as the MP spec suggests */
            start = rdtsc();
            while (!ap_started) {
                if (rdtsc() - start > TIMEOUT_CYCLES) { fail("smp", "AP did not start"); return; }
                cpu_relax();
            }
        }
        cpu_relax();
    }
    puts("SMP ap_apic_id="); put_dec(ap_apic_id); puts("\n");
    if (ap_apic_id != 1) { fail("smp", "wrong AP APIC id"); return; }
    pass("smp");
}

/* ---- misbehaving guest ---- */
static u8 chaos_buf[64];

static void test_chaos(void) {
    /* Nothing lives at 0xe0000000 (inside the MMIO hole): writes vanish, reads give all ones. */
    wr32(0xe0000000UL, 0x12345678);
    u32 v = rd32(0xe0000000UL);
    puts("CHAOS unmapped read="); put_hex(v); puts("\n");

    u64 base = find_device(4, 0);
    if (!base) { fail("chaos", "no rng device"); return; }
    struct vq vq;
    if (!virtio_setup("chaos", base, 0, 1, &vq)) return;
    u32 id, len;
    /* A buffer far outside guest RAM. */
    vq_set(&vq, 0, 0x7fff00000000UL, 64, VRING_DESC_F_WRITE, 0);
    vq_publish(&vq, 0); vq_kick(&vq);
    int got = vq_wait(&vq, &id, &len);
    puts("CHAOS bad-address used="); put_dec((u64)got); puts(" len="); put_dec(got ? len : 0); puts("\n");
    /* A descriptor loop: 1 -> 2 -> 1 ... */
    vq_set(&vq, 1, (u64)chaos_buf, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2);
    vq_set(&vq, 2, (u64)chaos_buf + 8, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1);
    vq_publish(&vq, 1); vq_kick(&vq);
    got = vq_wait(&vq, &id, &len);
    puts("CHAOS loop used="); put_dec((u64)got); puts(" len="); put_dec(got ? len : 0); puts("\n");
    /* An out-of-range head index. */
    vq_publish(&vq, 200); vq_kick(&vq);
    /* The device still works afterwards (if the bad head did not wedge the queue, this completes). */
    memset(chaos_buf, 0, sizeof chaos_buf);
    vq_set(&vq, 3, (u64)chaos_buf, 32, VRING_DESC_F_WRITE, 0);
    vq_publish(&vq, 3); vq_kick(&vq);
    got = vq_wait(&vq, &id, &len);
    puts("CHAOS after used="); put_dec((u64)got); puts("\n");
    pass("chaos");
}

static void triple_fault(void) {
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = { 0, 0 };
    puts("TRIPLE now\n");
    asm volatile("lidt %0; int3" : : "m"(idtr));
}

static void reset(void) {
    outb(0x64, 0xfe);
    for (;;) asm volatile("cli; hlt");
}

void guest_main(const u8 *bp) {
    cmdline = (const char *)(u64)*(const u32 *)(bp + BP_HDR_CMDLINE_PTR);
    puts("GUEST up\n");
    find_devices();
    if (selected("zeropage")) test_zeropage(bp);
    if (selected("rng")) test_rng();
    if (selected("blk")) test_blk();
    if (selected("vsock")) test_vsock();
    if (selected("net")) test_net();
    if (selected("fs")) test_fs();
    if (selected("vsockecho")) vsock_echo();
    if (selected("smp")) test_smp();
    if (selected("chaos")) test_chaos();
    if (selected("triplefault")) triple_fault();
    puts("DONE failures="); put_dec((u64)failures); puts("\n");
    if (selected("spin")) {
        /* Spin forever, but honour Ctrl-Alt-Del from the keyboard controller
         * (the VMM's graceful shutdown) unless told to ignore it. */
        int watch_kbd = !param("ignore_kbd");
        puts("SPIN\n");
        for (;;) {
            for (int i = 0; i < 100; i++) cpu_relax();
            if (watch_kbd && (inb(0x64) & 1) && inb(0x60) == 0x71) {
                puts("CAD received\n");
                reset();
            }
        }
    }
    reset();
}
