/*
 * LD_PRELOAD shim that lets Debian's xenstored and oxenstored (Xen 4.17) run on a
 * machine without Xen, serving the real store on a unix socket (the tier-1 test rig).
 *
 * Why each fake exists:
 * - Without -D the daemons introduce dom0, which needs the hypervisor libraries
 *   (xc_*, xenevtchn_*, xengnttab_*) and the files /proc/xen/xsd_port and
 *   /proc/xen/xsd_kva. With -D, 4.17's C xenstored segfaults on the first request.
 * - An event channel is a pipe nobody writes to: the daemon polls its fd forever and
 *   never sees an event, so the dom0 ring is never touched.
 * - A grant map and the xsd_kva file are zeroed 4 KiB pages: an empty, idle ring.
 * - xc_domain_getinfo reports every domid as existing and running, so the daemons
 *   never decide a domain died and release it.
 * Symbols carry the libraries' version nodes (see xenstored_shim.map) or the
 * daemons' versioned references would not bind to them.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
#define XC_DOMINFO_SIZE 112 /* sizeof(xc_dominfo_t) in Xen 4.17 */

struct fake_evtchn { int rfd, wfd; };

/* ---- libxenctrl (VERS_4.17.0) ---- */

void *shim_xc_interface_open(void *logger, void *dombuild_logger, unsigned flags)
{
    (void)logger; (void)dombuild_logger; (void)flags;
    return calloc(1, 64);
}

int shim_xc_interface_close(void *xch)
{
    free(xch);
    return 0;
}

int shim_xc_domain_getinfo(void *xch, uint32_t first_domid, unsigned max_doms, void *info)
{
    unsigned char *p = info;
    (void)xch;
    if (max_doms == 0)
        return 0;
    memset(p, 0, XC_DOMINFO_SIZE);
    memcpy(p, &first_domid, sizeof(first_domid));  /* domid, then ssidref (0) */
    p[8] = 1u << 5;                                 /* flag bitfield: running */
    return 1;
}

/* ---- libxenevtchn (VERS_1.0, fdopen VERS_1.2) ---- */

static void *new_evtchn(void)
{
    int fds[2];
    struct fake_evtchn *h;
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return NULL;
    h = malloc(sizeof(*h));
    if (!h) {
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    h->rfd = fds[0];
    h->wfd = fds[1];
    return h;
}

void *shim_xenevtchn_open(void *logger, unsigned flags)
{
    (void)logger; (void)flags;
    return new_evtchn();
}

void *shim_xenevtchn_fdopen(void *logger, int fd, unsigned flags)
{
    (void)logger; (void)fd; (void)flags;
    return new_evtchn();
}

int shim_xenevtchn_close(void *h)
{
    struct fake_evtchn *e = h;
    if (e) {
        close(e->rfd);
        close(e->wfd);
        free(e);
    }
    return 0;
}

int shim_xenevtchn_fd(void *h) { return ((struct fake_evtchn *)h)->rfd; }
int shim_xenevtchn_notify(void *h, unsigned port) { (void)h; (void)port; return 0; }
int shim_xenevtchn_unmask(void *h, unsigned port) { (void)h; (void)port; return 0; }
int shim_xenevtchn_unbind(void *h, unsigned port) { (void)h; (void)port; return 0; }

int shim_xenevtchn_pending(void *h)
{
    (void)h;
    errno = EAGAIN;
    return -1;
}

static int next_port = 10;

int shim_xenevtchn_bind_virq(void *h, unsigned virq)
{
    (void)h; (void)virq;
    return next_port++;
}

int shim_xenevtchn_bind_interdomain(void *h, uint32_t domid, unsigned remote_port)
{
    (void)h; (void)domid; (void)remote_port;
    return next_port++;
}

/* ---- libxengnttab (VERS_1.0) ---- */

void *shim_xengnttab_open(void *logger, unsigned flags)
{
    (void)logger; (void)flags;
    return calloc(1, 16);
}

int shim_xengnttab_close(void *h)
{
    free(h);
    return 0;
}

int shim_xengnttab_set_max_grants(void *h, uint32_t n) { (void)h; (void)n; return 0; }

void *shim_xengnttab_map_grant_ref(void *h, uint32_t domid, uint32_t ref, int prot)
{
    void *p;
    (void)h; (void)domid; (void)ref; (void)prot;
    p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int shim_xengnttab_unmap(void *h, void *start, uint32_t count)
{
    (void)h;
    return munmap(start, (size_t)count * PAGE);
}

/* ---- glibc open/open64 (GLIBC_2.2.5): the /proc/xen files ---- */

static int fake_proc_xen(const char *path)
{
    int fd;
    if (strcmp(path, "/proc/xen/xsd_port") == 0) {
        /* oxenstored parses it with int_of_string: "1", no newline. */
        fd = memfd_create("xsd_port", MFD_CLOEXEC);
        if (fd >= 0 && (write(fd, "1", 1) != 1 || lseek(fd, 0, SEEK_SET) < 0)) {
            close(fd);
            return -1;
        }
        return fd;
    }
    if (strcmp(path, "/proc/xen/xsd_kva") == 0) {
        fd = memfd_create("xsd_kva", MFD_CLOEXEC);
        if (fd >= 0 && ftruncate(fd, PAGE) < 0) {
            close(fd);
            return -1;
        }
        return fd;
    }
    return -2;
}

typedef int (*open_fn)(const char *, int, ...);

static int forward_open(const char *name, const char *path, int flags, va_list ap)
{
    mode_t mode = 0;
    open_fn real = (open_fn)dlsym(RTLD_NEXT, name);
    int fd = fake_proc_xen(path);
    if (fd != -2)
        return fd;
    if (flags & (O_CREAT | O_TMPFILE))
        mode = va_arg(ap, mode_t);
    return real(path, flags, mode);
}

int shim_open(const char *path, int flags, ...)
{
    va_list ap;
    int fd;
    va_start(ap, flags);
    fd = forward_open("open", path, flags, ap);
    va_end(ap);
    return fd;
}

int shim_open64(const char *path, int flags, ...)
{
    va_list ap;
    int fd;
    va_start(ap, flags);
    fd = forward_open("open64", path, flags, ap);
    va_end(ap);
    return fd;
}

/* Versioned exports: name@@NODE -> shim_name. */
#define EXPORT(name, node) __asm__(".symver shim_" #name "," #name "@@" node)
EXPORT(xc_interface_open, "VERS_4.17.0");
EXPORT(xc_interface_close, "VERS_4.17.0");
EXPORT(xc_domain_getinfo, "VERS_4.17.0");
EXPORT(xenevtchn_open, "VERS_1.0");
EXPORT(xenevtchn_close, "VERS_1.0");
EXPORT(xenevtchn_fd, "VERS_1.0");
EXPORT(xenevtchn_notify, "VERS_1.0");
EXPORT(xenevtchn_unmask, "VERS_1.0");
EXPORT(xenevtchn_unbind, "VERS_1.0");
EXPORT(xenevtchn_pending, "VERS_1.0");
EXPORT(xenevtchn_bind_virq, "VERS_1.0");
EXPORT(xenevtchn_bind_interdomain, "VERS_1.0");
EXPORT(xenevtchn_fdopen, "VERS_1.2");
EXPORT(xengnttab_open, "VERS_1.0");
EXPORT(xengnttab_close, "VERS_1.0");
EXPORT(xengnttab_set_max_grants, "VERS_1.0");
EXPORT(xengnttab_map_grant_ref, "VERS_1.0");
EXPORT(xengnttab_unmap, "VERS_1.0");
EXPORT(open, "GLIBC_2.2.5");
EXPORT(open64, "GLIBC_2.2.5");
