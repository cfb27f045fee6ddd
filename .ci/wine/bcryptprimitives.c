/* A stand-in bcryptprimitives.dll for wine versions without ProcessPrng
 * (Debian 12's wine 8), which Rust's standard library imports on Windows for
 * its random numbers (HashMap keys and the like). Built with mingw by
 * .ci/wine.sh and placed in the wine prefix's system32; never shipped. */
#include <windows.h>

/* RtlGenRandom, exported by advapi32 under this name. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

/* Like Windows' own: fills the buffer and always returns TRUE. */
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000 ? 0x10000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
