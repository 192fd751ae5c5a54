/*
 * vmlb-idmap-mount — attach idmapped copies of mounts, for the layer sandbox.
 *
 *   vmlb-idmap-mount USERNS-FILE [--ro] [--dev] SOURCE TARGET [[--ro] [--dev] SOURCE TARGET ...]
 *
 * For each pair: a copy of the mount tree at SOURCE (open_tree(OPEN_TREE_CLONE), not
 * recursive) whose ids are mapped through the user namespace USERNS-FILE (e.g.
 * /proc/PID/ns/user), attached at TARGET; --ro makes that copy read-only. Every copy is
 * nodev unless --dev: an image is untrusted, and a block device node in it (a crafted base
 * image can hold one for the host's disk) must not open the host's device. (A create-disk's
 * blank disk has no node but those the engine makes for it, the harmless character devices
 * mmdebstrap wants: its copy is --dev.) A layer running
 * as root of that user namespace (an unprivileged uid range on the host) then reads and
 * writes the files with their owners on disk: 0 inside is 0 on disk, 1000 is 1000.
 *
 * This is what util-linux 2.39's `mount --bind -o X-mount.idmap=USERNS-FILE` does; Debian 12
 * ships util-linux 2.38, whose mount(8) cannot, and systemd-nspawn (which can) costs about
 * 80 ms a start. A filesystem that cannot be idmapped (EINVAL: NFS, older tmpfs, …) gets a
 * plain copy instead, with a note on stderr: its files show as nobody inside.
 *
 * Exit status: 0, or 1 with one line on stderr naming the SOURCE and what failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/mount.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what, const char *path) {
  fprintf(stderr, "vmlb-idmap-mount: %s %s: %s\n", what, path, strerror(errno));
  return 1;
}

static int attach(int userns, int readonly, int dev, const char *source, const char *target) {
  int tree = (int)syscall(SYS_open_tree, AT_FDCWD, source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
  if (tree < 0) return fail("cannot copy the mount at", source);
  unsigned long long flags = (dev ? 0 : MOUNT_ATTR_NODEV) | (readonly ? MOUNT_ATTR_RDONLY : 0);
  struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP | flags, .userns_fd = (unsigned long long)userns};
  if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
    if (errno != EINVAL) return fail("cannot idmap", source);
    fprintf(stderr, "vmlb-idmap-mount: note: the filesystem of %s cannot be idmapped; its files show as nobody in the sandbox\n", source);
    struct mount_attr plain = {.attr_set = flags};
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &plain, sizeof plain) < 0) return fail("cannot set the mount flags of", source);
  }
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) return fail("cannot attach a copy at", target);
  close(tree);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: vmlb-idmap-mount USERNS-FILE [--ro] [--dev] SOURCE TARGET [[--ro] [--dev] SOURCE TARGET ...]\n");
    return 2;
  }
  int userns = open(argv[1], O_RDONLY | O_CLOEXEC);
  if (userns < 0) return fail("cannot open the user namespace", argv[1]);
  for (int i = 2; i < argc;) {
    int readonly = 0, dev = 0;
    for (; i < argc && argv[i][0] == '-'; i++) {
      if (strcmp(argv[i], "--ro") == 0) readonly = 1;
      else if (strcmp(argv[i], "--dev") == 0) dev = 1;
      else {
        fprintf(stderr, "vmlb-idmap-mount: unknown option %s\n", argv[i]);
        return 2;
      }
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "vmlb-idmap-mount: %s has no TARGET\n", argv[i < argc ? i : argc - 1]);
      return 2;
    }
    if (attach(userns, readonly, dev, argv[i], argv[i + 1]) != 0) return 1;
    i += 2;
  }
  return 0;
}
