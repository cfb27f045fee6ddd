//! Folders and files only their owner can read, with one call on every OS:
//! Unix modes 0700/0600, and on Windows a protected DACL (nothing inherited
//! from the parent; SYSTEM, Administrators and, unless this process runs as
//! SYSTEM, the current user, each with full control). `exposure` reads it
//! back for `doctor`.
//!
//! Why Windows needs its own code: `%ProgramData%` grants read to
//! BUILTIN\Users and a new folder inherits that, so on a terminal server
//! every local user could read the service's tokens, TLS key and logs.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents, then makes `dir` owner-only, even
/// when it existed (a folder made by hand, or by an older version). On
/// Windows the folders this call creates get the DACL too, and files and
/// folders already inside inherit it.
pub(crate) fn private_dir(dir: &Path) -> io::Result<()> {
    imp::private_dir(dir)
}

/// Creates the new file `path` (it must not exist) owner-only, before any
/// byte is written: for token files, the TLS key and their temporary files.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    imp::create_private_file(path)
}

/// Who, besides the owner (and on Windows SYSTEM and Administrators), can
/// get at `path`: one worded line each; empty when nobody can.
pub(crate) fn exposure(path: &Path) -> io::Result<Vec<String>> {
    imp::exposure(path)
}

/// A security descriptor with the DACL of a private file (SYSTEM,
/// Administrators and, unless this process runs as SYSTEM, its user), for a
/// Windows object that is created with one: the control pipe.
#[cfg(windows)]
pub(crate) fn private_descriptor() -> io::Result<imp::PrivateDescriptor> {
    imp::private_descriptor()
}

/// How `doctor` words a folder or file that nobody else can read.
pub(crate) const PRIVATE: &str = imp::PRIVATE;

/// What a person runs to make `path` owner-only again.
pub(crate) fn how_to_fix(path: &Path, is_dir: bool) -> String {
    imp::how_to_fix(path, is_dir)
}

#[cfg(unix)]
mod imp {
    use std::fs::{DirBuilder, File, OpenOptions, Permissions};
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::Path;

    /// rwx for the owner only: a folder others cannot list or enter.
    const DIR_MODE: u32 = 0o700;
    /// rw for the owner only.
    const FILE_MODE: u32 = 0o600;
    /// The group and other bits: any of them set lets someone else in.
    const OTHERS: u32 = 0o077;

    pub(super) const PRIVATE: &str = "owner-only";

    pub(super) fn private_dir(dir: &Path) -> io::Result<()> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.mode();
        if mode & 0o777 != DIR_MODE {
            std::fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
        }
        Ok(())
    }

    pub(super) fn create_private_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(path)
    }

    pub(super) fn exposure(path: &Path) -> io::Result<Vec<String>> {
        let meta = std::fs::metadata(path)?;
        let mut found = Vec::new();
        let mode = meta.mode() & 0o777;
        if mode & OTHERS != 0 {
            found.push(format!(
                "mode {mode:04o}: its group and other users have access"
            ));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            found.push(format!(
                "owned by uid {}, not by the user running this (uid {me})",
                meta.uid()
            ));
        }
        Ok(found)
    }

    pub(super) fn how_to_fix(path: &Path, is_dir: bool) -> String {
        let mode = if is_dir { DIR_MODE } else { FILE_MODE };
        format!(
            "run `chmod {mode:o} '{}'` as its owner (the proxy's user; `chown` it to that user if it is not)",
            path.display()
        )
    }
}

#[cfg(windows)]
mod imp {
    use std::ffi::OsStr;
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::windows::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::ptr::{null, null_mut};

    use windows_sys::Win32::Foundation::{
        CloseHandle, ERROR_INSUFFICIENT_BUFFER, ERROR_SUCCESS, GENERIC_ALL, GENERIC_READ, HANDLE,
        LocalFree,
    };
    use windows_sys::Win32::Security::Authorization::{
        ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
        GetNamedSecurityInfoW, SDDL_REVISION_1, SE_FILE_OBJECT, SetNamedSecurityInfoW,
    };
    use windows_sys::Win32::Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, ACL_SIZE_INFORMATION, AclSizeInformation,
        DACL_SECURITY_INFORMATION, GetAce, GetAclInformation, GetSecurityDescriptorDacl,
        GetTokenInformation, INHERIT_ONLY_ACE, OWNER_SECURITY_INFORMATION,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID, TOKEN_QUERY, TOKEN_USER,
        TokenUser,
    };
    use windows_sys::Win32::Storage::FileSystem::FILE_READ_DATA;
    use windows_sys::Win32::System::SystemServices::ACCESS_ALLOWED_ACE_TYPE;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    /// LocalSystem: the account Windows services run as.
    const SYSTEM_SID: &str = "S-1-5-18";
    /// BUILTIN\Administrators.
    const ADMINISTRATORS_SID: &str = "S-1-5-32-544";
    /// Rights that let a SID read a file's bytes or list a folder
    /// (FILE_LIST_DIRECTORY is the same bit as FILE_READ_DATA).
    const READ_RIGHTS: u32 = FILE_READ_DATA | GENERIC_READ | GENERIC_ALL;

    pub(super) const PRIVATE: &str =
        "protected: only SYSTEM, Administrators and its owner can read it";

    /// Frees what Windows allocated with LocalAlloc on drop.
    struct Local(*mut core::ffi::c_void);

    impl Drop for Local {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the pointer came from an API that documents LocalFree
                // as its release, and is freed once.
                unsafe { LocalFree(self.0) };
            }
        }
    }

    fn wide(s: &OsStr) -> Vec<u16> {
        s.encode_wide().chain(std::iter::once(0)).collect()
    }

    /// A NUL-terminated UTF-16 string from Windows, as a String.
    ///
    /// # Safety
    /// `p` points at a NUL-terminated UTF-16 string.
    unsafe fn from_wide(p: *const u16) -> String {
        let mut len = 0;
        // SAFETY: the caller promises a terminator; we stop at it.
        while unsafe { *p.add(len) } != 0 {
            len += 1;
        }
        // SAFETY: `len` u16s before the terminator are readable.
        String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// A SID as text (`S-1-5-21-…`).
    ///
    /// # Safety
    /// `sid` points at a valid SID.
    unsafe fn sid_string(sid: PSID) -> io::Result<String> {
        let mut text = null_mut();
        // SAFETY: `sid` is valid (caller); `text` receives a LocalAlloc'd string.
        if unsafe { ConvertSidToStringSidW(sid, &mut text) } == 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = Local(text.cast());
        // SAFETY: on success `text` is a NUL-terminated string.
        let s = unsafe { from_wide(text) };
        drop(owned);
        Ok(s)
    }

    /// The SID of the user this process runs as (SYSTEM for the service).
    fn current_user_sid() -> io::Result<String> {
        let mut token: HANDLE = null_mut();
        // SAFETY: the pseudo-handle of this process; `token` receives a handle.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return Err(io::Error::last_os_error());
        }
        struct Handle(HANDLE);
        impl Drop for Handle {
            fn drop(&mut self) {
                // SAFETY: a handle OpenProcessToken returned, closed once.
                unsafe { CloseHandle(self.0) };
            }
        }
        let token = Handle(token);
        let mut needed = 0u32;
        // SAFETY: asks for the size only (no buffer).
        let sized = unsafe { GetTokenInformation(token.0, TokenUser, null_mut(), 0, &mut needed) };
        if sized == 0
            && io::Error::last_os_error().raw_os_error() != Some(ERROR_INSUFFICIENT_BUFFER as i32)
        {
            return Err(io::Error::last_os_error());
        }
        // u64s: TOKEN_USER holds pointers, so the buffer must be 8-aligned.
        let mut buf = vec![0u64; (needed as usize).div_ceil(8).max(1)];
        let len = u32::try_from(buf.len() * 8).unwrap_or(u32::MAX);
        // SAFETY: `buf` is writable for `len` bytes and aligned for TOKEN_USER.
        if unsafe {
            GetTokenInformation(
                token.0,
                TokenUser,
                buf.as_mut_ptr().cast(),
                len,
                &mut needed,
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: GetTokenInformation filled `buf` with a TOKEN_USER whose SID
        // points into `buf`, which lives until the end of this function.
        unsafe {
            let user = &*buf.as_ptr().cast::<TOKEN_USER>();
            sid_string(user.User.Sid)
        }
    }

    /// The DACL as SDDL: `P` protects it (nothing inherited from the parent);
    /// `FA` is full control; on a folder `OICI` passes each ACE on to the
    /// files and folders inside.
    fn sddl(user: &str, is_dir: bool) -> String {
        let inherit = if is_dir { "OICI" } else { "" };
        let mut text = format!("D:P(A;{inherit};FA;;;SY)(A;{inherit};FA;;;BA)");
        if user != SYSTEM_SID {
            text.push_str(&format!("(A;{inherit};FA;;;{user})"));
        }
        text
    }

    /// A security descriptor holding the protected DACL of [`sddl`] for this
    /// process's user.
    fn descriptor(is_dir: bool) -> io::Result<Local> {
        let text = wide(OsStr::new(&sddl(&current_user_sid()?, is_dir)));
        let mut sd: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: `text` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor.
        if unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                text.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                null_mut(),
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Local(sd))
    }

    /// The descriptor of a private file, for an object created with one.
    pub struct PrivateDescriptor(Local);

    impl PrivateDescriptor {
        /// The `SECURITY_DESCRIPTOR`, valid while `self` lives.
        pub fn as_ptr(&self) -> *mut core::ffi::c_void {
            self.0.0
        }
    }

    pub(super) fn private_descriptor() -> io::Result<PrivateDescriptor> {
        descriptor(false).map(PrivateDescriptor)
    }

    /// Replaces the DACL of `path` with the protected one of [`sddl`].
    fn protect(path: &Path, is_dir: bool) -> io::Result<()> {
        let sd = descriptor(is_dir)?;
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = null_mut();
        // SAFETY: `sd.0` is the descriptor just made; `dacl` points into it.
        if unsafe { GetSecurityDescriptorDacl(sd.0, &mut present, &mut dacl, &mut defaulted) } == 0
        {
            return Err(io::Error::last_os_error());
        }
        let name = wide(path.as_os_str());
        // SAFETY: `name` is NUL-terminated; `dacl` lives in `sd` until the end
        // of this function; owner, group and SACL are left alone (null).
        let rc = unsafe {
            SetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                null_mut(),
                null_mut(),
                dacl,
                null(),
            )
        };
        if rc != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        Ok(())
    }

    pub(super) fn private_dir(dir: &Path) -> io::Result<()> {
        // The folders this call makes, top first: each gets the DACL, so a
        // new parent (the state folder under %ProgramData%) is protected too.
        let mut created: Vec<PathBuf> = Vec::new();
        let mut at = Some(dir);
        while let Some(p) = at {
            if p.as_os_str().is_empty() || p.exists() {
                break;
            }
            created.push(p.to_owned());
            at = p.parent();
        }
        std::fs::create_dir_all(dir)?;
        for p in created.iter().rev() {
            protect(p, true)?;
        }
        if created.is_empty() {
            protect(dir, true)?;
        }
        Ok(())
    }

    pub(super) fn create_private_file(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        // Nothing is written yet: the DACL is in place before the secret.
        if let Err(e) = protect(path, false) {
            drop(file);
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(file)
    }

    /// A name for the SIDs that show up in a default DACL, else the SID.
    fn describe(sid: &str) -> String {
        let name = match sid {
            "S-1-1-0" => "Everyone",
            "S-1-5-11" => "Authenticated Users",
            "S-1-5-32-545" => "BUILTIN\\Users",
            "S-1-5-32-546" => "BUILTIN\\Guests",
            "S-1-5-4" => "INTERACTIVE",
            "S-1-5-7" => "ANONYMOUS LOGON",
            _ => return sid.to_owned(),
        };
        format!("{name} ({sid})")
    }

    pub(super) fn exposure(path: &Path) -> io::Result<Vec<String>> {
        let name = wide(path.as_os_str());
        let (mut owner, mut dacl): (PSID, *mut ACL) = (null_mut(), null_mut());
        let mut sd: PSECURITY_DESCRIPTOR = null_mut();
        // SAFETY: `name` is NUL-terminated; owner and DACL point into `sd`,
        // which is LocalAlloc'd and freed by `Local` below.
        let rc = unsafe {
            GetNamedSecurityInfoW(
                name.as_ptr(),
                SE_FILE_OBJECT,
                OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
                &mut owner,
                null_mut(),
                &mut dacl,
                null_mut(),
                &mut sd,
            )
        };
        if rc != ERROR_SUCCESS {
            return Err(io::Error::from_raw_os_error(rc as i32));
        }
        let _sd = Local(sd);
        if dacl.is_null() {
            return Ok(vec!["no DACL at all: Everyone has full control".to_owned()]);
        }
        let mut trusted = vec![SYSTEM_SID.to_owned(), ADMINISTRATORS_SID.to_owned()];
        trusted.push(current_user_sid()?);
        if !owner.is_null() {
            // SAFETY: `owner` points into `sd`, alive until the end.
            trusted.push(unsafe { sid_string(owner)? });
        }
        let mut size = ACL_SIZE_INFORMATION {
            AceCount: 0,
            AclBytesInUse: 0,
            AclBytesFree: 0,
        };
        // SAFETY: `dacl` points into `sd`; `size` is the struct of that class.
        if unsafe {
            GetAclInformation(
                dacl,
                (&mut size as *mut ACL_SIZE_INFORMATION).cast(),
                size_of::<ACL_SIZE_INFORMATION>() as u32,
                AclSizeInformation,
            )
        } == 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut found = Vec::new();
        for i in 0..size.AceCount {
            let mut ace = null_mut();
            // SAFETY: `i` is below the ACL's count; `ace` points into `sd`.
            if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: every ACE starts with an ACE_HEADER.
            let header = unsafe { &*ace.cast::<ACE_HEADER>() };
            if u32::from(header.AceType) != ACCESS_ALLOWED_ACE_TYPE
                || u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0
            {
                // Deny ACEs take away; inherit-only ones do not apply here.
                continue;
            }
            // SAFETY: an ACCESS_ALLOWED_ACE_TYPE ACE is an ACCESS_ALLOWED_ACE,
            // its SID starting at SidStart.
            let (mask, sid) = unsafe {
                let allowed = &*ace.cast::<ACCESS_ALLOWED_ACE>();
                (
                    allowed.Mask,
                    sid_string((&raw const allowed.SidStart).cast_mut().cast())?,
                )
            };
            if mask & READ_RIGHTS != 0 && !trusted.contains(&sid) {
                found.push(format!(
                    "{} may read it (ACE mask {mask:#x})",
                    describe(&sid)
                ));
            }
        }
        Ok(found)
    }

    pub(super) fn how_to_fix(path: &Path, is_dir: bool) -> String {
        let inherit = if is_dir { "(OI)(CI)" } else { "" };
        format!(
            "restart the proxy or service (it protects its folders and files as it starts and writes), \
             or run as administrator: icacls \"{}\" /inheritance:r /grant:r *{SYSTEM_SID}:{inherit}F \
             *{ADMINISTRATORS_SID}:{inherit}F{}",
            path.display(),
            if is_dir { " /T" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    #[test]
    fn what_is_made_here_nobody_else_can_read() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state").join("tokens");
        private_dir(&dir).unwrap();
        let file = dir.join("secret");
        std::io::Write::write_all(&mut create_private_file(&file).unwrap(), b"x").unwrap();
        for path in [dir.parent().unwrap(), &dir, &file] {
            assert_eq!(
                exposure(path).unwrap(),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
        }
        // Again over an existing folder: still fine.
        private_dir(&dir).unwrap();
        assert!(exposure(&dir).unwrap().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn new_folders_and_files_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state").join("tokens");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(
            mode(dir.parent().unwrap()),
            0o700,
            "a parent made on the way"
        );
        let file = dir.join("secret");
        std::io::Write::write_all(&mut create_private_file(&file).unwrap(), b"x").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(exposure(&dir).unwrap().is_empty());
        assert!(exposure(&file).unwrap().is_empty());
        assert!(
            create_private_file(&file).is_err(),
            "never over an existing file"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_open_folder_is_closed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let found = exposure(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("0755"), "{found:?}");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert!(exposure(&dir).unwrap().is_empty());
        assert!(how_to_fix(&dir, true).contains("chmod 700"));
    }
}
