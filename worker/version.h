/* version.h - the build's version: `git describe --always` of the
 * checkout it was built from, or "unknown" (the Makefile writes its
 * definition into the build directory). */
#ifndef HL_VERSION_H
#define HL_VERSION_H

const char *hl_version(void);

#endif
