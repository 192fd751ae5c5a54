/*
 * vmlb-sandbox-mount — the mounts of one sandboxed layer run, in one process.
 *
 *   vmlb-sandbox-mount USERNS-FILE OP...
 *
 * OPs, done in order (bin/vmlb-run-layer builds the list; every path without white space):
 *
 *   [--ro] [--dev] SOURCE TARGET       an idmapped copy of the mount at SOURCE at TARGET
 *   [--ro] [--dev] --bind SOURCE TARGET  a plain copy (ids as they are)
 *   [--dev] --tmpfs DIR                a fresh tmpfs (mode 0755, 1 MiB)
 *   --mkdir DIR | --touch FILE         a mount point
 *   --sysfs NETNS-FILE DIR             a read-only sysfs of that network namespace
 *
 * A copy is of the one mount at SOURCE (open_tree(OPEN_TREE_CLONE), not recursive), attached
 * at TARGET; --ro makes it read-only. An idmapped copy maps ids through the user namespace
 * USERNS-FILE (e.g. /proc/PID/ns/user): a layer running as root of that namespace (an
 * unprivileged host uid range) reads and writes the files with their owners on disk — 0
 * inside is 0 on disk, 1000 is 1000. Every copy and tmpfs is nodev unless --dev: an image is
 * untrusted, and a block device node in it (a crafted base image can hold one for the host's
 * disk) must not open the host's device. (A create-disk's blank disk has no node but those the
 * engine makes for it, the harmless character devices mmdebstrap wants: its copy is --dev.)
 *
 * Why a program: util-linux 2.38 (Debian 12) cannot make idmapped mounts (2.39's
 * `mount -o X-mount.idmap` can), systemd-nspawn (which can) costs about 80 ms a start, and
 * one process for the whole list instead of one mount(8) or nsenter(1) each keeps the
 * sandbox's cost per layer down. A filesystem that cannot be idmapped (EINVAL: NFS, older
 * tmpfs, …) gets a plain copy instead, with a note on stderr: its files show as nobody inside.
 *
 * Exit status: 0; 1 with one line on stderr naming the path and what failed; 2 for usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what, const char *path) {
  fprintf(stderr, "vmlb-sandbox-mount: %s %s: %s\n", what, path, strerror(errno));
  return 1;
}

static int usage(const char *why) {
  fprintf(stderr, "vmlb-sandbox-mount: %s\nusage: vmlb-sandbox-mount USERNS-FILE OP... (see its source)\n", why);
  return 2;
}

/* A copy of the mount at source, idmapped through userns (or plain when userns < 0), at target. */
static int copy_mount(int userns, int readonly, int dev, const char *source, const char *target) {
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) return fail("cannot copy the mount at", source);
  unsigned long long flags = (dev ? 0 : MOUNT_ATTR_NODEV) | (readonly ? MOUNT_ATTR_RDONLY : 0);
  struct mount_attr attr = {.attr_set = flags};
  if (userns >= 0) {
    attr.attr_set |= MOUNT_ATTR_IDMAP;
    attr.userns_fd = (unsigned long long)userns;
  }
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
    if (userns < 0 || errno != EINVAL) return fail("cannot set the mount flags of", source);
    fprintf(stderr, "vmlb-sandbox-mount: note: the filesystem of %s cannot be idmapped; its files show as nobody in the sandbox\n", source);
    struct mount_attr plain = {.attr_set = flags};
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &plain, sizeof plain) < 0) return fail("cannot set the mount flags of", source);
  }
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) return fail("cannot attach a copy at", target);
  close(tree);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) return usage("no operations");
  int userns = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (userns < 0) return fail("cannot open the user namespace", argv[1]);
  for (int i = 2; i < argc;) {
    int readonly = 0, dev = 0;
    for (; i < argc && (strcmp(argv[i], "--ro") == 0 || strcmp(argv[i], "--dev") == 0); i++) {
      if (argv[i][2] == 'r') readonly = 1;
      else dev = 1;
    }
    if (i >= argc) return usage("options without an operation");
    const char *op = argv[i];
    /* How many arguments each operation takes after its name (a plain copy has no name). */
    int named = op[0] == '-' && op[1] == '-';
    int nargs = !named ? 2 : strcmp(op, "--bind") == 0 || strcmp(op, "--sysfs") == 0 ? 2 : 1;
    if (named && strcmp(op, "--bind") && strcmp(op, "--sysfs") && strcmp(op, "--tmpfs") && strcmp(op, "--mkdir") && strcmp(op, "--touch")) {
      return usage(op);
    }
    if (i + named + nargs > argc) return usage("an operation without its paths");
    const char *a = argv[i + named], *b = nargs == 2 ? argv[i + named + 1] : NULL;
    i += named + nargs;
    int rc = 0;
    if (!named) {
      rc = copy_mount(userns, readonly, dev, a, b);
    } else if (strcmp(op, "--bind") == 0) {
      rc = copy_mount(-1, readonly, dev, a, b);
    } else if (strcmp(op, "--tmpfs") == 0) {
      if (mount("tmpfs", a, "tmpfs", MS_NOSUID | (dev ? 0 : MS_NODEV), "mode=755,size=1m") < 0) rc = fail("cannot mount a tmpfs at", a);
    } else if (strcmp(op, "--mkdir") == 0) {
      if (mkdir(a, 0755) < 0 && errno != EEXIST) rc = fail("cannot make the folder", a);
    } else if (strcmp(op, "--touch") == 0) {
      int fd = open(a, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
      if (fd < 0) rc = fail("cannot make the file", a);
      else close(fd);
    } else { /* --sysfs NETNS-FILE DIR: sysfs shows the network namespace of its mounter. */
      int ns = open(a, O_RDONLY | O_CLOEXEC);
      if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) rc = fail("cannot enter the network namespace", a);
      else if (mount("sysfs", b, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) rc = fail("cannot mount a sysfs at", b);
      if (ns >= 0) close(ns);
    }
    if (rc) return rc;
  }
  return 0;
}
