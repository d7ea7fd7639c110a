// A tiny OpenIGTLink peer built on the reference C++ library (Debian libopenigtlink-dev, 1.11,
// header version 1), used by tests/interop to check our codec and transport against it.
//
//   igtl_peer serve N           listen on a free port (printed as "PORT <p>"), accept one client, send N
//                               frames like PlusServer: IMAGE "Image_Reference" (ImageToReference embedded)
//                               then TRANSFORM ProbeToTracker and ReferenceToTracker, same timestamp.
//   igtl_peer receive HOST PORT N
//                               connect, receive N messages, unpack each with CRC checking on and print
//                               its values, one "key value..." line each, for the test to compare
//                               (STATUS keep-alives are skipped and not counted).
//
// The frame content is a pure function of the frame number; the Python test computes the same values.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <string>
#include <vector>

#include "igtlClientSocket.h"
#include "igtlImageMessage.h"
#include "igtlMessageHeader.h"
#include "igtlPolyDataMessage.h"
#include "igtlServerSocket.h"
#include "igtlStringMessage.h"
#include "igtlTransformMessage.h"

static const int W = 64, H = 48;

static void stamp(igtl::MessageBase* msg, int frame) {
  msg->SetTimeStamp(1700000000u + frame, (unsigned int)frame * 0x10000000u);
}

static int serve(int n) {
  igtl::ServerSocket::Pointer server = igtl::ServerSocket::New();
  if (server->CreateServer(0) < 0) { std::fprintf(stderr, "cannot listen\n"); return 1; }
  std::printf("PORT %d\n", server->GetServerPort());
  std::fflush(stdout);
  igtl::ClientSocket::Pointer sock = server->WaitForConnection(20000);
  if (!sock.IsNotNull()) { std::fprintf(stderr, "no client\n"); return 1; }
  for (int f = 0; f < n; ++f) {
    igtl::ImageMessage::Pointer img = igtl::ImageMessage::New();
    img->SetDimensions(W, H, 1);
    img->SetSpacing(0.2f, 0.3f, 1.0f);
    img->SetScalarTypeToUint8();
    img->SetDeviceName("Image_Reference");
    // ImageToReference: x axis -> +y, y axis -> -x, origin (10 + f, 20, 30). PlusServer puts the image
    // *centre* in the matrix: origin + R * spacing * (size - 1) / 2.
    float t[3] = {0, 1, 0}, s[3] = {-1, 0, 0}, nn[3] = {0, 0, 1};
    img->SetNormals(t, s, nn);
    float cx = 10.0f + f - 0.3f * (H - 1) / 2.0f, cy = 20.0f + 0.2f * (W - 1) / 2.0f, cz = 30.0f;
    img->SetOrigin(cx, cy, cz);
    img->AllocateScalars();
    unsigned char* px = (unsigned char*)img->GetScalarPointer();
    for (int j = 0; j < H; ++j)
      for (int i = 0; i < W; ++i) px[j * W + i] = (unsigned char)((i + 2 * j + f) % 256);
    stamp(img, f);
    img->Pack();
    sock->Send(img->GetPackPointer(), img->GetPackSize());
    const char* names[2] = {"ProbeToTracker", "ReferenceToTracker"};
    for (int k = 0; k < 2; ++k) {
      igtl::TransformMessage::Pointer tm = igtl::TransformMessage::New();
      tm->SetDeviceName(names[k]);
      igtl::Matrix4x4 m;
      igtl::IdentityMatrix(m);
      m[0][0] = 0; m[0][1] = -1; m[1][0] = 1; m[1][1] = 0;  // 90 degrees about z
      m[0][3] = 0.5f * f + k; m[1][3] = -0.25f * f; m[2][3] = 100.0f + k;
      tm->SetMatrix(m);
      stamp(tm, f);
      tm->Pack();
      sock->Send(tm->GetPackPointer(), tm->GetPackSize());
    }
  }
  sock->CloseSocket();
  return 0;
}

static void print_image(igtl::MessageHeader::Pointer& hdr, igtl::ClientSocket::Pointer& sock) {
  igtl::ImageMessage::Pointer m = igtl::ImageMessage::New();
  m->SetMessageHeader(hdr);
  m->AllocatePack();
  sock->Receive(m->GetPackBodyPointer(), m->GetPackBodySize());
  if (!(m->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf("UNPACK_FAILED IMAGE\n"); return; }
  int d[3]; float sp[3], o[3], t[3], s[3], n[3];
  m->GetDimensions(d); m->GetSpacing(sp); m->GetOrigin(o); m->GetNormals(t, s, n);
  std::printf("IMAGE %s type %d comps %d endian %d coord %d dims %d %d %d\n", m->GetDeviceName(),
              m->GetScalarType(), m->GetNumComponents(), m->GetEndian(), m->GetCoordinateSystem(), d[0], d[1], d[2]);
  std::printf("spacing %.9g %.9g %.9g\norigin %.9g %.9g %.9g\n", sp[0], sp[1], sp[2], o[0], o[1], o[2]);
  std::printf("normals %.9g %.9g %.9g %.9g %.9g %.9g %.9g %.9g %.9g\n", t[0], t[1], t[2], s[0], s[1], s[2], n[0], n[1], n[2]);
  const unsigned char* b = (const unsigned char*)m->GetScalarPointer();
  std::printf("bytes");
  for (int i = 0; i < m->GetImageSize(); ++i) std::printf(" %d", b[i]);
  std::printf("\n");
}

static void print_transform(igtl::MessageHeader::Pointer& hdr, igtl::ClientSocket::Pointer& sock) {
  igtl::TransformMessage::Pointer m = igtl::TransformMessage::New();
  m->SetMessageHeader(hdr);
  m->AllocatePack();
  sock->Receive(m->GetPackBodyPointer(), m->GetPackBodySize());
  if (!(m->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf("UNPACK_FAILED TRANSFORM\n"); return; }
  igtl::Matrix4x4 mat;
  m->GetMatrix(mat);
  std::printf("TRANSFORM %s matrix", m->GetDeviceName());
  for (int r = 0; r < 4; ++r) for (int c = 0; c < 4; ++c) std::printf(" %.9g", mat[r][c]);
  std::printf("\n");
}

static void print_string(igtl::MessageHeader::Pointer& hdr, igtl::ClientSocket::Pointer& sock) {
  igtl::StringMessage::Pointer m = igtl::StringMessage::New();
  m->SetMessageHeader(hdr);
  m->AllocatePack();
  sock->Receive(m->GetPackBodyPointer(), m->GetPackBodySize());
  if (!(m->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf("UNPACK_FAILED STRING\n"); return; }
  std::printf("STRING %s encoding %d\ntext %s\n", m->GetDeviceName(), m->GetEncoding(), m->GetString());
}

static void print_cells(const char* label, igtl::PolyDataCellArray* cells) {
  std::printf("%s %u", label, cells ? cells->GetNumberOfCells() : 0u);
  if (cells) {
    for (unsigned int c = 0; c < cells->GetNumberOfCells(); ++c) {
      std::list<igtlUint32> cell;
      cells->GetCell(c, cell);
      std::printf(" %u", (unsigned int)cell.size());
      for (std::list<igtlUint32>::iterator it = cell.begin(); it != cell.end(); ++it) std::printf(" %u", *it);
    }
  }
  std::printf("\n");
}

static void print_polydata(igtl::MessageHeader::Pointer& hdr, igtl::ClientSocket::Pointer& sock) {
  igtl::PolyDataMessage::Pointer m = igtl::PolyDataMessage::New();
  m->SetMessageHeader(hdr);
  m->AllocatePack();
  sock->Receive(m->GetPackBodyPointer(), m->GetPackBodySize());
  if (!(m->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf("UNPACK_FAILED POLYDATA\n"); return; }
  igtl::PolyDataPointArray* pts = m->GetPoints();
  int np = pts ? pts->GetNumberOfPoints() : 0;
  std::printf("POLYDATA %s\npoints %d", m->GetDeviceName(), np);
  for (int i = 0; i < np; ++i) { float p[3]; pts->GetPoint(i, p); std::printf(" %.9g %.9g %.9g", p[0], p[1], p[2]); }
  std::printf("\n");
  print_cells("polygons", m->GetPolygons());
  print_cells("lines", m->GetLines());
  for (int a = 0; a < m->GetNumberOfAttributes(); ++a) {
    igtl::PolyDataAttribute* att = m->GetAttribute(a);
    unsigned int size = att->GetSize(), nc = att->GetNumberOfComponents();
    std::vector<float> data(size * nc);
    att->GetData(&data[0]);
    std::printf("attribute %s type %d comps %u n %u values", att->GetName(), att->GetType(), nc, size);
    for (size_t i = 0; i < data.size(); ++i) std::printf(" %.9g", data[i]);
    std::printf("\n");
  }
}

static int receive(const char* host, int port, int n) {
  igtl::ClientSocket::Pointer sock = igtl::ClientSocket::New();
  if (sock->ConnectToServer(host, port) != 0) { std::fprintf(stderr, "cannot connect\n"); return 1; }
  for (int k = 0; k < n; ++k) {
    igtl::MessageHeader::Pointer hdr = igtl::MessageHeader::New();
    hdr->InitPack();
    if (sock->Receive(hdr->GetPackPointer(), hdr->GetPackSize()) != hdr->GetPackSize()) {
      std::printf("CLOSED\n");
      return 1;
    }
    hdr->Unpack();
    if (std::string(hdr->GetDeviceType()) == "STATUS") {  // keep-alives: not counted, not printed
      sock->Skip(hdr->GetBodySizeToRead(), 1);
      --k;
      continue;
    }
    unsigned int sec, frac;
    hdr->GetTimeStamp(&sec, &frac);
    std::printf("MESSAGE %s %s %u %u\n", hdr->GetDeviceType(), hdr->GetDeviceName(), sec, frac);
    std::string type = hdr->GetDeviceType();
    if (type == "IMAGE") print_image(hdr, sock);
    else if (type == "TRANSFORM") print_transform(hdr, sock);
    else if (type == "STRING") print_string(hdr, sock);
    else if (type == "POLYDATA") print_polydata(hdr, sock);
    else { sock->Skip(hdr->GetBodySizeToRead(), 1); std::printf("SKIPPED %s\n", type.c_str()); }
    std::fflush(stdout);
  }
  sock->CloseSocket();
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "serve") == 0) return serve(std::atoi(argv[2]));
  if (argc >= 5 && std::strcmp(argv[1], "receive") == 0) return receive(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  std::fprintf(stderr, "usage: igtl_peer serve N | igtl_peer receive HOST PORT N\n");
  return 2;
}
