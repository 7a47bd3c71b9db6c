#include "store/spool.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "store/store.hpp"

namespace bmx {

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
