/*
 * Tiny static PID 1 for boot-testing the Podvisor guest kernel (boot-test.sh).
 * Prints a marker as soon as it runs, then checks that the kernel has what the
 * agent will need (mounts, namespaces, cgroup v2 controllers, sockets), prints
 * one result line, and powers the VM off (or resets it, see below).  Build: gcc -static -O2 -o init init.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <dirent.h>
#include <linux/netlink.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static int fails;
static char failed[2048];

static void check(const char *what, int ok)
{
	if (!ok) {
		fails++;
		snprintf(failed + strlen(failed), sizeof(failed) - strlen(failed), " %s(%s)", what,
			 errno ? strerror(errno) : "missing");
	}
	errno = 0;
}

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY), n;
	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return n;
}

static int try_mount(const char *src, const char *dst, const char *type, const char *data)
{
	mkdir(dst, 0755);
	return mount(src, dst, type, 0, data) == 0;
}

static int socket_ok(int family, int type, int proto)
{
	int fd = socket(family, type, proto);
	if (fd < 0)
		return 0;
	close(fd);
	return 1;
}

int main(void)
{
	struct utsname u;
	char buf[4096], up[64] = "?";

	/* The marker first: boot-test.sh times qemu start -> this line. */
	uname(&u);
	printf("PODVISOR-INIT-OK %s\n", u.release);
	fflush(stdout);

	check("mount-proc", try_mount("proc", "/proc", "proc", NULL));
	if (read_file("/proc/uptime", buf, sizeof(buf)) > 0)
		sscanf(buf, "%63s", up);
	check("mount-sysfs", try_mount("sysfs", "/sys", "sysfs", NULL));
	check("mount-devtmpfs", try_mount("devtmpfs", "/dev", "devtmpfs", NULL));
	check("mount-devpts", try_mount("devpts", "/dev/pts", "devpts", "newinstance,ptmxmode=0666"));
	check("mount-mqueue", try_mount("mqueue", "/dev/mqueue", "mqueue", NULL));
	check("mount-tmpfs", try_mount("tmpfs", "/tmp", "tmpfs", "mode=1777"));
	check("tmpfs-xattr", setxattr("/tmp", "user.podvisor", "1", 1, 0) == 0 ||
				   setxattr("/tmp", "trusted.podvisor", "1", 1, 0) == 0);
	check("mount-cgroup2", try_mount("cgroup2", "/sys/fs/cgroup", "cgroup2", NULL));
	if (read_file("/sys/fs/cgroup/cgroup.controllers", buf, sizeof(buf)) > 0) {
		check("cgroup-cpu", strstr(buf, "cpu ") != NULL || strstr(buf, "cpu\n") != NULL);
		check("cgroup-memory", strstr(buf, "memory") != NULL);
		check("cgroup-pids", strstr(buf, "pids") != NULL);
		check("cgroup-cpuset", strstr(buf, "cpuset") != NULL);
	} else {
		check("cgroup-controllers", 0);
	}
	mkdir("/tmp/l", 0755); mkdir("/tmp/u", 0755); mkdir("/tmp/w", 0755);
	check("mount-overlay", try_mount("overlay", "/tmp/o", "overlay",
					 "lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w"));
	if (read_file("/proc/filesystems", buf, sizeof(buf)) > 0) {
		check("fs-ext4", strstr(buf, "\text4") != NULL);
		check("fs-erofs", strstr(buf, "\terofs") != NULL);
		check("fs-fuse", strstr(buf, "\tfuse") != NULL);
		check("fs-virtiofs", strstr(buf, "\tvirtiofs") != NULL);
		check("fs-nfs4", strstr(buf, "\tnfs4") != NULL);
	}
	check("sock-unix", socket_ok(AF_UNIX, SOCK_STREAM, 0));
	check("sock-inet", socket_ok(AF_INET, SOCK_STREAM, 0));
	check("sock-inet6", socket_ok(AF_INET6, SOCK_STREAM, 0));
	check("sock-vsock", socket_ok(AF_VSOCK, SOCK_STREAM, 0));
	check("sock-nfnetlink", socket_ok(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER));
	check("seccomp", prctl(PR_GET_SECCOMP) == 0);
	check("bpf-syscall", syscall(SYS_bpf, -1, NULL, 0) < 0 && errno != ENOSYS);
	errno = 0;
	{
		pid_t pid = fork();
		if (pid == 0)
			_exit(unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
				      CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP) == 0 ? 0 : 1);
		int st = 0;
		waitpid(pid, &st, 0);
		check("namespaces", WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	/* Devices the kernel bound (informational): virtio device ids + drivers. */
	{
		char devs[1024] = "", path[512], link[256];
		DIR *d = opendir("/sys/bus/virtio/devices");
		struct dirent *e;
		while (d && (e = readdir(d))) {
			ssize_t n;
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/sys/bus/virtio/devices/%s/device", e->d_name);
			char id[16];
			if (read_file(path, id, sizeof(id)) <= 0)
				continue;
			id[strcspn(id, "\n")] = 0;
			snprintf(path, sizeof(path), "/sys/bus/virtio/devices/%s/driver", e->d_name);
			n = readlink(path, link, sizeof(link) - 1);
			link[n > 0 ? n : 0] = 0;
			snprintf(devs + strlen(devs), sizeof(devs) - strlen(devs), " %.32s:%s=%.32s", e->d_name,
				 id, n > 0 ? strrchr(link, '/') + 1 : "unbound");
		}
		if (d)
			closedir(d);
		printf("PODVISOR-DEVICES virtio:%s\n", devs[0] ? devs : " none");
	}
	printf("PODVISOR-SMOKE uptime=%s fails=%d%s\n", up, fails, failed);
	fflush(stdout);
	sync();
	/* `podvisor_test_reboot` on the command line: reset instead of power-off
	 * (what works without ACPI: reboot=k ends in a triple fault, and qemu
	 * -no-reboot / a VMM then exits). */
	if (read_file("/proc/cmdline", buf, sizeof(buf)) > 0 && strstr(buf, "podvisor_test_reboot"))
		reboot(RB_AUTOBOOT);
	reboot(RB_POWER_OFF);
	printf("PODVISOR-POWEROFF-FAILED %s\n", strerror(errno));
	fflush(stdout);
	return 1; /* init exiting panics; with panic=-1 the VM resets */
}
