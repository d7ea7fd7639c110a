"""PLUS device-set XML: the shipped PLUS configurations, every VolumeReconstruction attribute, errors.

The element is parsed straight into the reconstructor's one config type, ``ReconstructionConfig``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from usx_stream.compound.config import ReconstructionConfig
from usx_stream.io.plus_config import parse_device_set, read_device_set
from usx_stream.transforms import TransformError

XMLS = {
    "PlusDeviceSet_SpinePhantomFreehandReconstructionOnly.xml":
        dict(interpolation="LINEAR", clip_origin=(0, 0), clip_size=(820, 616), fan=(0.0, 0.0)),
    "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml":
        dict(interpolation="LINEAR", clip_origin=(192, 16), clip_size=(420, 580), fan=(-45.0, 45.0)),
    "PlusDeviceSet_VolumeReconstructionOnly_SpinePhantom_NN_MEAN.xml":
        dict(interpolation="NEAREST_NEIGHBOR", clip_origin=(0, 0), clip_size=(820, 616), fan=(0.0, 0.0)),
}


def test_every_shipped_plus_xml_is_covered(plus_data):
    assert {p.name for p in plus_data.glob("*.xml")} == set(XMLS)


@pytest.mark.parametrize("name", sorted(XMLS))
def test_plus_device_sets(plus_data, name):
    path = plus_data / name
    ds = read_device_set(path)
    # Independent reading of the same file with the standard library.
    root = ET.parse(path).getroot()
    elems = root.findall("CoordinateDefinitions/Transform")
    assert [cd.name for cd in ds.coordinate_definitions] == [e.get("From") + "To" + e.get("To") for e in elems]
    for cd, e in zip(ds.coordinate_definitions, elems):
        expected = np.array([float(v) for v in e.get("Matrix").split()]).reshape(4, 4)
        assert np.array_equal(cd.matrix, expected)
        assert cd.error == float(e.get("Error")) and cd.date == e.get("Date")
    repo = ds.transform_repository()
    np.testing.assert_allclose(repo.get("ProbeToImage") @ ds.coordinate_definitions[0].matrix, np.eye(4), atol=1e-12)
    with pytest.raises(TransformError):
        repo.get("ImageToReference")  # the tracking comes from the sequence file, not from here

    vr, want = ds.volume_reconstruction, XMLS[name]
    assert isinstance(vr, ReconstructionConfig)
    assert vr.output_spacing.tolist() == [0.5, 0.5, 0.5]
    assert tuple(vr.clip_rectangle_origin) == want["clip_origin"] and tuple(vr.clip_rectangle_size) == want["clip_size"]
    assert tuple(vr.fan_angles_deg) == want["fan"] and vr.fan_clipping == (want["fan"] != (0.0, 0.0))
    assert vr.interpolation == want["interpolation"] and vr.compounding_mode == "MEAN"
    assert vr.optimization == "FULL" and vr.attributes["NumberOfThreads"] == "1" and vr.fill_holes is True
    assert vr.output_origin is None and vr.output_extent is None and vr.skip_interval == 1
    assert len(vr.hole_filling) == 1
    hf = vr.hole_filling[0]
    assert (hf.type, hf.stick_length_limit, hf.number_of_sticks_to_use) == ("STICK", 9, 1)
    assert vr.attributes == dict(root.find("VolumeReconstruction").attrib)


def test_fan_parameters_of_the_trus_configuration(plus_data):
    path = plus_data / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_LN_MEAN.xml"
    vr = read_device_set(path).volume_reconstruction
    assert vr.fan_origin_pixel.tolist() == [380.0, 20.0]
    assert (vr.fan_radius_start_pixel, vr.fan_radius_stop_pixel) == (120.0, 360.0)


FULL = """<PlusConfiguration version="2.7">
  <DataCollection StartupDelaySec="1.0">
    <Device Id="TrackerDevice" Type="FakeTracker" LocalTimeOffsetSec="-0.025" />
    <Device Id="VideoDevice" Type="SavedDataSource" LocalTimeOffsetSec="0.125" />
    <Device Id="CaptureDevice" Type="VirtualCapture" />
    <Device Id="VolumeReconstructorDevice" Type="VirtualVolumeReconstructor">
      <VolumeReconstruction ImageCoordinateFrame="Image" ReferenceCoordinateFrame="Reference"
        OutputSpacing="0.15 0.2 0.25" OutputOrigin="-15 -15 30" OutputExtent="0 300 0 200 0 100"
        ClipRectangleOrigin="10 20" ClipRectangleSize="600 400"
        FanAnglesDeg="-30 35" FanOriginPixel="320.5 -4" FanRadiusStartPixel="12" FanRadiusStopPixel="480"
        EnableFanAnglesAutoDetect="TRUE" FanAnglesAutoDetectBrightnessThreshold="12.5"
        FanAnglesAutoDetectFilterRadiusPixel="7" PixelRejectionThreshold="3" SkipInterval="2"
        Interpolation="LINEAR" Optimization="PARTIAL" CompoundingMode="MAXIMUM" NumberOfThreads="4"
        FillHoles="ON" ImportanceMaskFilename="mask.png">
        <HoleFilling>
          <HoleFillingElement Type="GAUSSIAN" Size="5" Stdev="0.6667" MinimumKnownVoxelsRatio="0.50001" />
          <HoleFillingElement Type="GAUSSIAN_ACCUMULATION" Size="7" Stdev="1.5" MinimumKnownVoxelsRatio="0.25" />
          <HoleFillingElement Type="DISTANCE_WEIGHT_INVERSE" Size="3" MinimumKnownVoxelsRatio="0.1" />
          <HoleFillingElement Type="NEAREST_NEIGHBOR" Size="9" MinimumKnownVoxelsRatio="0.05" />
          <HoleFillingElement Type="STICK" StickLengthLimit="9" NumberOfSticksToUse="2" />
        </HoleFilling>
      </VolumeReconstruction>
    </Device>
  </DataCollection>
  <CoordinateDefinitions>
    <Transform From="Image" To="TransducerOriginPixel" Matrix="1 0 0 -410 0 1 0 5 0 0 1 0 0 0 0 1"
      Date="2011.12.06 17:57:00" Persistent="FALSE" />
    <Transform From="StylusTip" To="Stylus" Matrix="
        1 0 0 203.772
        0 1 0 -12.283
        0 0 1 1.17469
        0 0 0 1" Error="0.582721" Date="012712_152030" />
  </CoordinateDefinitions>
</PlusConfiguration>
"""


def test_every_volume_reconstruction_attribute():
    ds = parse_device_set(FULL)
    assert ds.version == "2.7"
    assert ds.local_time_offsets == {"TrackerDevice": -0.025, "VideoDevice": 0.125}
    assert set(ds.devices) == {"TrackerDevice", "VideoDevice", "CaptureDevice", "VolumeReconstructorDevice"}
    vr = ds.volume_reconstruction
    assert (vr.image_coordinate_frame, vr.reference_coordinate_frame) == ("Image", "Reference")
    assert vr.output_spacing.tolist() == [0.15, 0.2, 0.25] and vr.output_origin.tolist() == [-15.0, -15.0, 30.0]
    assert vr.output_extent.tolist() == [0, 300, 0, 200, 0, 100]
    assert vr.clip_rectangle_origin.tolist() == [10, 20] and vr.clip_rectangle_size.tolist() == [600, 400]
    assert vr.fan_angles_deg.tolist() == [-30.0, 35.0] and vr.fan_origin_pixel.tolist() == [320.5, -4.0]
    assert (vr.fan_radius_start_pixel, vr.fan_radius_stop_pixel) == (12.0, 480.0)
    assert vr.pixel_rejection_threshold == 3.0 and vr.skip_interval == 2
    assert (vr.interpolation, vr.optimization, vr.compounding_mode) == ("LINEAR", "PARTIAL", "MAXIMUM")
    assert vr.fill_holes
    # read by PLUS, not acted on here: checked, kept raw
    assert vr.attributes["NumberOfThreads"] == "4" and vr.attributes["EnableFanAnglesAutoDetect"] == "TRUE"
    assert vr.attributes["ImportanceMaskFilename"] == "mask.png"
    kinds = [(h.type, h.size, h.stdev, h.min_ratio) for h in vr.hole_filling[:4]]
    assert kinds == [("GAUSSIAN", 5, 0.6667, 0.50001), ("GAUSSIAN_ACCUMULATION", 7, 1.5, 0.25),
                     ("DISTANCE_WEIGHT_INVERSE", 3, 1.0, 0.1), ("NEAREST_NEIGHBOR", 9, 1.0, 0.05)]
    stick = vr.hole_filling[4]
    assert (stick.type, stick.stick_length_limit, stick.number_of_sticks_to_use) == ("STICK", 9, 2)
    cds = {cd.name: cd for cd in ds.coordinate_definitions}
    assert cds["StylusTipToStylus"].matrix[0, 3] == 203.772 and cds["StylusTipToStylus"].error == 0.582721
    assert cds["ImageToTransducerOriginPixel"].error is None
    assert cds["ImageToTransducerOriginPixel"].attributes["Persistent"] == "FALSE"


def test_defaults_and_deprecated_attributes_map_like_plus():
    xml = """<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FanAngles="-20 20"
             FanOrigin="100 5" FanDepth="300" Calculation="MAXIMUM" SkipInterval="0" /></PlusConfiguration>"""
    vr = parse_device_set(xml).volume_reconstruction
    assert vr.fan_angles_deg.tolist() == [-20.0, 20.0] and vr.fan_origin_pixel.tolist() == [100.0, 5.0]
    assert vr.fan_radius_stop_pixel == 300.0 and vr.compounding_mode == "MAXIMUM"
    assert vr.skip_interval == 1  # PLUS resets values below 1
    assert (vr.interpolation, vr.optimization) == ("NEAREST_NEIGHBOR", "FULL")
    assert vr.fill_holes is False and vr.hole_filling == ()
    assert vr.clip_rectangle_size.tolist() == [0, 0] and vr.fan_radius_start_pixel == 0.0
    off = parse_device_set('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" Compounding="OFF"/>'
                           "</PlusConfiguration>").volume_reconstruction
    assert off.compounding_mode == "LATEST"
    assert parse_device_set("<PlusConfiguration/>").volume_reconstruction is None


@pytest.mark.parametrize("xml, match", [
    ("<PlusConfiguration><CoordinateDefinitions>", "malformed XML"),
    ("<Other/>", "PlusConfiguration"),
    ('<PlusConfiguration><CoordinateDefinitions><Transform From="A" To="B" Matrix="1 0 0 0 0 1 0 0 0 0 1 0 0 0 0"/>'
     "</CoordinateDefinitions></PlusConfiguration>", "expected 16 numbers"),
    ('<PlusConfiguration><CoordinateDefinitions><Transform From="A" To="B" '
     'Matrix="1 0 0 0 0 1 zero 0 0 0 1 0 0 0 0 1"/>'
     "</CoordinateDefinitions></PlusConfiguration>", "Matrix='1 0 0 0 0 1 zero"),
    ('<PlusConfiguration><CoordinateDefinitions><Transform From="A" Matrix="1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1"/>'
     "</CoordinateDefinitions></PlusConfiguration>", "'From' and 'To'"),
    ('<PlusConfiguration><CoordinateDefinitions><Transform From="A" To="B" Matrix="1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1" '
     'Error="big"/></CoordinateDefinitions></PlusConfiguration>', "Error='big'"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1"/></PlusConfiguration>', "OutputSpacing='1 1'"),
    ('<PlusConfiguration><VolumeReconstruction/></PlusConfiguration>', "OutputSpacing"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" Interpolation="CUBIC"/></PlusConfiguration>',
     "Interpolation='CUBIC'"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" ClipRectangleSize="10.5 3"/></PlusConfiguration>',
     "ClipRectangleSize='10.5 3'"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"/></PlusConfiguration>',
     "HoleFilling"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"><HoleFilling>'
     '<HoleFillingElement Type="GAUSSIAN" Size="3"/></HoleFilling></VolumeReconstruction></PlusConfiguration>',
     "HoleFillingElement[0] Type=GAUSSIAN: missing required attribute(s) ['Stdev', 'MinimumKnownVoxelsRatio']"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"><HoleFilling>'
     '<HoleFillingElement Type="BLUR"/></HoleFilling></VolumeReconstruction></PlusConfiguration>', "Type='BLUR'"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" CompoundingMode="IMPORTANCE_MASK"/>'
     "</PlusConfiguration>", "ImportanceMaskFilename"),
    # PLUS modes the reconstructor does not run fail here, naming the attribute, not later in the reconstructor
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" CompoundingMode="IMPORTANCE_MASK" '
     'ImportanceMaskFilename="mask.png"/></PlusConfiguration>',
     "CompoundingMode='IMPORTANCE_MASK': not supported (ImportanceMaskFilename='mask.png' is not read)"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" FillHoles="ON"><HoleFilling>'
     '<HoleFillingElement Type="NEAREST_NEIGHBOR" Size="0" MinimumKnownVoxelsRatio="0.1"/></HoleFilling>'
     "</VolumeReconstruction></PlusConfiguration>", "HoleFillingElement[0]: HoleFillingElement.size: must be >= 1"),
    ('<PlusConfiguration><VolumeReconstruction OutputSpacing="1 1 1" OutputOrigin="0 0 0" '
     'OutputExtent="0 10 5 0 0 10"/></PlusConfiguration>', "test.xml: <VolumeReconstruction>: "
     "ReconstructionConfig.output_extent: max < min"),
    ('<PlusConfiguration><DataCollection><Device Id="T" LocalTimeOffsetSec="soon"/></DataCollection>'
     "</PlusConfiguration>", "LocalTimeOffsetSec='soon'"),
])
def test_errors_name_element_attribute_and_value(xml, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        parse_device_set(xml, source="test.xml")


def test_read_device_set_reports_the_file(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<PlusConfiguration><Transform")
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        read_device_set(bad)
