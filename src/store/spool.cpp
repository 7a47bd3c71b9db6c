#include "store/spool.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "store/store.hpp"

namespace bmx {

void make_private_dirs(const std::string& dir) {
    if (dir.empty()) return;
    std::vector<std::filesystem::path> missing;
    for (std::filesystem::path p = std::filesystem::path(dir).lexically_normal();
         !p.empty() && !std::filesystem::exists(p); p = p.parent_path()) {
        missing.push_back(p);
        if (p == p.parent_path()) break;
    }
    for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
        if (::mkdir(it->c_str(), 0700) != 0 && errno != EEXIST)
            throw StoreError("cannot create " + it->string() + ": " + std::strerror(errno));
        ::chmod(it->c_str(), 0700);  // the umask may have narrowed it; never widened
    }
}

void make_private_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) throw StoreError("cannot open " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) == 0 && (st.st_mode & 077) != 0) ::fchmod(fd, st.st_mode & 0700);
    ::close(fd);
    for (const char* suffix : {"-wal", "-shm"}) {
        const std::string companion = path + suffix;
        struct stat cs {};
        if (::stat(companion.c_str(), &cs) == 0 && (cs.st_mode & 077) != 0)
            ::chmod(companion.c_str(), cs.st_mode & 0700);
    }
}

std::shared_ptr<Spool> Spool::open(const std::string& dir) {
    std::string path = (dir.empty() ? std::string(".") : dir) + "/.spool-XXXXXX";
    int fd = ::mkostemp(path.data(), O_CLOEXEC);
    if (fd < 0) throw StoreError("spool in " + dir + ": " + std::strerror(errno));
    ::unlink(path.c_str());  // nameless from now on: it goes when the last holder closes it
    return std::shared_ptr<Spool>(new Spool(fd));
}

Spool::~Spool() {
    ::close(fd_);
}

void Spool::append(std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::pwrite(fd_, data.data(), data.size(), size_);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw StoreError(std::string("spool write: ") + std::strerror(errno));
        size_ += n;
        data.remove_prefix(static_cast<std::size_t>(n));
    }
}

std::string Spool::read(std::int64_t offset, std::size_t n) const {
    std::string out(n, '\0');
    std::size_t got = 0;
    while (got < n) {
        ssize_t r = ::pread(fd_, out.data() + got, n - got, offset + static_cast<off_t>(got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw StoreError(std::string("spool read: ") + std::strerror(errno));
        if (r == 0) break;
        got += static_cast<std::size_t>(r);
    }
    out.resize(got);
    return out;
}

}  // namespace bmx
